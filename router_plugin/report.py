"""Quota tables for humans and machines: what is left in each pool, when it resets, what is set aside.

Shared by ``router-plugin status``, ``router-plugin demo`` and the metrics collector. Reads the shared store
(the same Redis keys every worker uses), never spends a request, and tells time by Redis ``TIME`` so every
host agrees on "resets in 3h12m".

``take_snapshot(store, deployments)`` -> :class:`Snapshot`; ``render_status(snapshot)`` is the text table,
``snapshot.as_dict()`` the ``--json`` document. Its schema (``"schema": "router_plugin.status/1"``)::

    {"schema": "router_plugin.status/1",
     "now": 1787443150.123, "now_utc": "2026-08-23T00:19:10Z",       # Redis clock
     "store": "redis://host:6379/0", "key_prefix": "rp:", "config": "configs/litellm_config.yaml" | null,
     "pools": [{"id": "or:3fa9c1d2e4f5",                                # the pool's hash tag (a key fingerprint)
                "label": "OpenRouter free pool (account 3fa9c1d2)", "provider": "openrouter" | "groq" | null,
                "deployments": ["openrouter/deepseek/deepseek-r1:free", ...],
                "limits": [{"counter": "day", "name": "requests/day", "unit": "requests" | "tokens",
                            "window_s": 86400, "kind": "fixed" | "refill",
                            "used": 45, "limit": 50, "remaining": 5,
                            "resets_at": 1787443200.0 | null, "resets_at_utc": "...Z" | null,
                            "resets_in_s": 49.9 | null,
                            "state": "ok" | "exhausted" | "blocked", "reason": "exhausted (provider 429)" | null}]}],
     "deployments": [{"group": "free-chat", "model": "openrouter/deepseek/deepseek-r1:free",
                      "provider": "openrouter", "pool": "or:3fa9c1d2e4f5", "context_window": 163840 | null,
                      "state": "ok" | "cooling" | "quarantined" | "unmetered",
                      "reason": "quarantined: No endpoints found for ..." | null,
                      "until": epoch s | null, "until_utc": "...Z" | null, "until_in_s": s | null,
                      "strikes": 1}],
     "waiting": {"free-chat": {"0": 1, "1": 4}}}                      # who waits in each group's line now

Each pool also has (issue 17; null when unknown or not configured)::

     "served_today": {"priority": {"0": 12, "1": 30}, "key": {"alice": 20}, "team": {"research": 20},
                      "last_hour": 9},                                  # served requests (best effort counts)
     "reserved_for_priority_0": {"minute": 4, "day": 10} | null,       # priority.reserve of each limit
     "pace": {"allowed_so_far": 21, "used": 18, "burst": 3} | null,    # the day's pace, when pace is on
     "forecast": {"rate_per_h": 9.0, "runs_out_at": epoch s | null, "runs_out_at_utc": "..." | null,
                  "lasts": false}                                        # at the last hour's rate

Fixed windows (OpenRouter minute / UTC day) reset at the window's end (``resets_at`` is null when nothing is used);
for refill buckets (Groq) ``resets_at`` is when the bucket has drained empty while there is room left, and, once it is
exhausted, when the next request (or token) fits again — not when it is empty.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._format import human_duration
from .limits import Counter, DeploymentPlan
from .store import Reservation, SyncQuotaStore

SCHEMA = "router_plugin.status/1"


# ---- time formatting ------------------------------------------------------------------------------------------

def utc_iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def when(ts: float | None, now: float) -> str:
    """``00:20:00 (in 50s)``; the date is added when it is not today (UTC)."""
    if ts is None or ts <= now:
        return "-"
    same_day = time.gmtime(ts)[:3] == time.gmtime(now)[:3]
    at = time.strftime("%H:%M:%S" if same_day else "%m-%d %H:%M:%S", time.gmtime(ts))
    return f"{at} (in {human_duration(ts - now)})"


# ---- the snapshot ---------------------------------------------------------------------------------------------

_LIMIT_NAMES = {"minute": "requests/min", "day": "requests/day", "rpm": "requests/min", "rpd": "requests/day",
                "tpm": "tokens/min", "tpd": "tokens/day"}


def limit_name(counter: Counter) -> str:
    name = _LIMIT_NAMES.get(counter.limit.name, counter.limit.name)
    if counter.key.startswith("m:"):  # a model-level limit inside the OpenRouter account pool
        model = counter.key[2:].rsplit(":", 1)[0]
        return f"{name} ({model})"
    return name


@dataclass(frozen=True)
class LimitStatus:
    counter: str
    name: str
    unit: str
    window_s: int
    kind: str
    used: int
    limit: int
    resets_at: float | None
    state: str  # ok | exhausted | blocked
    reason: str | None

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "counter": self.counter, "name": self.name, "unit": self.unit, "window_s": self.window_s,
            "kind": self.kind, "used": self.used, "limit": self.limit, "remaining": self.remaining,
            "resets_at": self.resets_at, "resets_at_utc": utc_iso(self.resets_at),
            "resets_in_s": round(self.resets_at - now, 3) if self.resets_at is not None else None,
            "state": self.state, "reason": self.reason,
        }


@dataclass(frozen=True)
class PoolStatus:
    id: str
    label: str
    provider: str | None
    deployments: tuple[str, ...]
    limits: tuple[LimitStatus, ...]
    # issue 17: {"served_today": {"priority": {"0": n}, "key": {label: n}, "team": {id: n}, "last_hour": n},
    #            "reserved_for_priority_0": {counter: units}, "pace": {"allowed_so_far", "used", "burst"} | None,
    #            "forecast": {"rate_per_h", "runs_out_at", "runs_out_at_utc", "lasts"} | None}
    usage: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "provider": self.provider, "deployments": list(self.deployments),
                "limits": [lim.as_dict(now) for lim in self.limits], **self.usage}


@dataclass(frozen=True)
class DeploymentStatus:
    group: str
    model: str
    provider: str | None
    pool: str  # PoolStatus.id, "" when unmetered
    pool_label: str
    context_window: int | None
    state: str  # ok | cooling | quarantined | unmetered
    reason: str | None
    until: float | None
    strikes: int

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "group": self.group, "model": self.model, "provider": self.provider, "pool": self.pool,
            "context_window": self.context_window, "state": self.state, "reason": self.reason,
            "until": self.until, "until_utc": utc_iso(self.until),
            "until_in_s": round(self.until - now, 3) if self.until is not None else None, "strikes": self.strikes,
        }


@dataclass(frozen=True)
class Snapshot:
    now: float  # Redis TIME, epoch seconds
    store: str
    key_prefix: str
    pools: tuple[PoolStatus, ...]
    deployments: tuple[DeploymentStatus, ...]
    config: str | None = None
    clamped_today: int | None = None  # provider values bounded today (providers/bounds.py); None: unknown
    waiting: dict[str, dict[int, int]] = dataclasses.field(default_factory=dict)  # group -> {priority: waiters}

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "now": self.now, "now_utc": utc_iso(self.now), "store": self.store,
            "key_prefix": self.key_prefix, "config": self.config,
            "pools": [p.as_dict(self.now) for p in self.pools],
            "deployments": [d.as_dict(self.now) for d in self.deployments],
            "provider_values_clamped_today": self.clamped_today,
            "waiting": {g: {str(p): n for p, n in w.items()} for g, w in self.waiting.items()},
        }

    def pool(self, label_or_id: str) -> PoolStatus | None:
        return next((p for p in self.pools if label_or_id in (p.id, p.label)), None)

    def deployment(self, model: str) -> DeploymentStatus | None:
        return next((d for d in self.deployments if d.model == model), None)


def store_target(settings):
    """The StoreTarget the workers of ``settings`` use (Redis Cluster included where this version supports it)."""
    from .store import resolve_target

    try:
        return resolve_target(settings.redis_url, settings.embedded_path, settings.redis_timeout_s,
                              cluster=getattr(settings, "redis_cluster", False))
    except TypeError:  # a store module without cluster support
        return resolve_target(settings.redis_url, settings.embedded_path, settings.redis_timeout_s)


def open_store(settings) -> SyncQuotaStore:
    """A plain (no fail-open) sync store on the workers' Redis: operators want to see Redis errors."""
    return SyncQuotaStore(store_target(settings), settings.key_prefix, arrival_margin_s=settings.arrival_margin_s)


def redis_now(store: SyncQuotaStore) -> float:
    seconds, micros = store.client.time()
    return int(seconds) + int(micros) / 1e6


def _refill_level(store: SyncQuotaStore, plan: DeploymentPlan, counter: Counter, now_ms: int) -> int:
    """A refill bucket's drained level at ``now_ms`` (Redis time), rounded up to whole units."""
    at, held = store.client.hmget(store.keys.counter(plan, counter), "at", "used")
    if at is None or held is None:
        return 0
    level = float(held) - (now_ms - float(at)) * counter.limit.capacity / counter.limit.window_ms
    return max(0, math.ceil(level - 1e-6))


def counter_status(store: SyncQuotaStore, plan: DeploymentPlan, counter: Counter) -> tuple[LimitStatus, float]:
    """One counter as every worker sees it (the reserve script in dry-run mode); also returns Redis' now."""
    single = dataclasses.replace(plan, counters=(counter,))
    outcome = store.peek(single, counters_only=True)
    limit = counter.limit
    base = dict(counter=counter.key, name=limit_name(counter), unit=limit.unit, window_s=limit.window_s,
                kind=limit.kind, limit=limit.capacity)
    now = outcome.now_ms / 1000
    if isinstance(outcome, Reservation):
        state = outcome.states[0]
        left = max(0, state.remaining)
        used = limit.capacity - left
        if limit.kind == "refill":
            # What the bucket holds, as the provider counts it. ``left`` is what an admission may take now, which
            # also holds back the arrival margin's credit (a fraction of a request): shown as used it would read
            # one more than the provider's own count right after a calibration.
            used = min(used, _refill_level(store, plan, counter, outcome.now_ms))
        resets = state.reset_ms / 1000 if used > 0 and state.reset_ms / 1000 > now else None
        if used > 0 and resets is None and limit.kind == "refill":
            # the bucket has drained, but refill is credited only after the arrival margin: still counted
            resets = now + used * limit.window_s / limit.capacity
        if limit.kind == "refill" and resets is not None and left <= 0:
            # An exhausted refilling bucket (Groq) takes the next request as soon as one request's worth has
            # drained, long before it is empty again: show that, as a refusal does.
            resets = _next_fit(resets, limit.capacity, limit.window_s, now)
        return LimitStatus(used=used, resets_at=resets, state="exhausted" if left <= 0 else "ok", reason=None,
                           **base), now
    # Blocked with cost 0: either full (a spill into this window) or held by a provider's 429 / a 402.
    full = outcome.why == "full"
    until = outcome.until_ms / 1000 if outcome.until_ms > 0 else None
    if full and until is not None and limit.kind == "refill":
        until = _next_fit(until, limit.capacity, limit.window_s, now)
    return LimitStatus(used=limit.capacity, resets_at=until,
                       state="exhausted" if full else "blocked", reason=None if full else outcome.why, **base), now


def _next_fit(empty_at: float, capacity: int, window_s: float, now: float) -> float:
    """When a refill bucket that drains empty at ``empty_at`` has room for one more request (or token)."""
    per_unit = window_s / capacity if capacity > 0 else 0.0
    return max(now, empty_at - (capacity - 1) * per_unit)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def deployment_status(store: SyncQuotaStore, plan: DeploymentPlan, now: float) -> DeploymentStatus:
    base = dict(group=plan.model_name, model=plan.model, provider=plan.provider, pool=plan.slot,
                pool_label=plan.pool_label if plan.metered else "", context_window=plan.context_window)
    if not plan.metered:
        return DeploymentStatus(state="unmetered", reason=None, until=None, strikes=0, **base)
    until_raw, why, strikes = store.client.hmget(store.keys.model(plan), "until", "why", "strikes")
    until = float(_text(until_raw)) / 1000 if until_raw is not None else None
    strikes_n = int(float(_text(strikes))) if strikes is not None else 0
    if until is None or until <= now:
        return DeploymentStatus(state="ok", reason=None, until=None, strikes=strikes_n, **base)
    reason = _text(why) or "cooling down"
    state = "quarantined" if reason.startswith("quarantined") else "cooling"
    return DeploymentStatus(state=state, reason=reason, until=until, strikes=strikes_n, **base)


def _day_limit(limits: Iterable[LimitStatus]) -> LimitStatus | None:
    days = [lim for lim in limits if lim.window_s == 86_400 and lim.unit == "requests"]
    return min(days, key=lambda lim: lim.remaining) if days else None


def pool_usage(store: SyncQuotaStore, plan: DeploymentPlan, limits: tuple[LimitStatus, ...], now: float,
               settings: Any = None) -> dict[str, Any]:
    """Issue 17's part of a pool's status: served today per priority / key / team, what is kept for priority 0,
    the pace (allowed so far / used) and the forecast at the last hour's rate. Best effort: {} if unreadable."""
    from .usage import forecast, read_usage

    out: dict[str, Any] = {"served_today": None, "reserved_for_priority_0": None, "pace": None, "forecast": None}
    try:
        served = read_usage(store.client, store.keys.prefix, plan.slot, now)
    except Exception:  # older servers, ACLs: the tables above still show
        return out
    out["served_today"] = served
    policy = getattr(settings, "policy", None)
    reserve = float(getattr(policy, "reserve", 0.0) or 0.0)
    if reserve > 0:
        out["reserved_for_priority_0"] = {lim.counter: lim.limit - math.floor(lim.limit * (1 - reserve) + 1e-6)
                                          for lim in limits}
    day = _day_limit(limits)
    pace_table = getattr(policy, "pace", None) or {}
    if day is not None and pace_table:
        try:
            from .priority import _lookup
            pace = _lookup(pace_table, plan)
        except ImportError:  # pragma: no cover
            pace = None
        if pace is not None:
            burst = pace.burst if pace.burst is not None else max(1, math.ceil(day.limit / 24))
            if day.kind == "fixed":
                allowed = min(day.limit, burst + day.limit * (now % 86_400) / 86_400)
            else:  # a rolling day: the level may reach the burst; it refills at capacity / day
                allowed = min(day.limit, burst)
            out["pace"] = {"allowed_so_far": math.floor(allowed + 1e-6), "used": day.used, "burst": burst}
    if day is not None:
        fc = forecast(day.remaining, day.limit, day.resets_at, served["last_hour"], now, rolling=day.kind == "refill")
        fc["runs_out_at_utc"] = utc_iso(fc["runs_out_at"])
        out["forecast"] = fc
    return out


def take_snapshot(store: SyncQuotaStore, plans: Iterable[DeploymentPlan], config: str | None = None,
                  settings: Any = None) -> Snapshot:
    """Every distinct pool's counters and every deployment's cooldown, read from the shared store; with
    ``settings``, also the reserve and pace of issue 17; always who waits in each group's line and usage."""
    plans = list(plans)
    now = redis_now(store)
    pools: dict[str, dict[str, Any]] = {}
    for plan in plans:
        if not plan.metered:
            continue
        pool = pools.setdefault(plan.slot, {"plan": plan, "deployments": [], "counters": {}})
        if plan.model not in pool["deployments"]:
            pool["deployments"].append(plan.model)
        for counter in plan.counters:
            if counter.key not in pool["counters"]:
                pool["counters"][counter.key] = (plan, counter)
    pool_rows = []
    for slot, pool in pools.items():
        limits = []
        for plan, counter in pool["counters"].values():
            status, now = counter_status(store, plan, counter)
            limits.append(status)
        first: DeploymentPlan = pool["plan"]
        limits_t = tuple(limits)
        pool_rows.append(PoolStatus(slot, first.pool_label, first.provider, tuple(pool["deployments"]), limits_t,
                                    pool_usage(store, first, limits_t, now, settings)))
    deployments = tuple(deployment_status(store, plan, now) for plan in plans)
    clamped_on = getattr(store, "clamped_on", None)
    clamped = clamped_on(int(now // 86_400)) if clamped_on is not None else None
    waiting: dict[str, dict[int, int]] = {}
    try:
        from .store.queue import waiting_by_priority

        for group in dict.fromkeys(plan.model_name for plan in plans):
            line = waiting_by_priority(store.client, store.keys.prefix, group)
            if line:
                waiting[group] = line
    except Exception:  # best effort, as the usage counts
        waiting = {}
    return Snapshot(now, store.target.describe(), store.keys.prefix, tuple(pool_rows), deployments, config, clamped,
                    waiting)


# ---- text -----------------------------------------------------------------------------------------------------

def _clip(text: str | None, width: int = 90) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def render_status(snap: Snapshot, title: str | None = None) -> str:
    """Two tables: every pool's limits (used / limit, left, reset), then every deployment's state."""
    now = snap.now
    head = title or "router_plugin status"
    clock = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    lines = [f"{head}   store {snap.store} (prefix {snap.key_prefix})   {clock} (Redis clock)", ""]
    table: list[tuple] = [("pool / limit", "used / limit", "left", "resets (UTC)", "state")]
    for pool in snap.pools:
        table.append((pool.label, "", "", "", ""))
        for lim in pool.limits:
            state = lim.state if not lim.reason else f"{lim.state}: {_clip(lim.reason, 60)}"
            table.append((f"  {lim.name}", f"{lim.used} / {lim.limit}", lim.remaining, when(lim.resets_at, now), state))
    if len(table) > 1:
        lines.append(render_table(table))
    else:
        lines.append("(no metered deployments)")
    lines += render_usage(snap)
    lines.append("")
    dep_table: list[tuple] = [("deployment", "group", "state", "until (UTC)", "reason")]
    for d in snap.deployments:
        dep_table.append((d.model, d.group, d.state, when(d.until, now), _clip(d.reason)))
    lines.append(render_table(dep_table))
    if snap.clamped_today is not None:
        lines += ["", f"provider values clamped today: {snap.clamped_today}"]
    return "\n".join(lines)


def lim_kind(pool: PoolStatus) -> str:
    day = _day_limit(pool.limits)
    return day.kind if day is not None else "fixed"


def render_usage(snap: Snapshot) -> list[str]:
    """Issue 17's lines: per pool who used it today, the reserve, the pace, the forecast; who waits in line."""
    lines: list[str] = []
    for pool in snap.pools:
        u = pool.usage
        if not u:
            continue
        said = []
        served = u.get("served_today") or {}
        prios = served.get("priority") or {}
        if prios:
            said.append("served today by priority: " + ", ".join(f"{p}: {n}" for p, n in prios.items()))
        for what in ("key", "team"):
            who = served.get(what) or {}
            if who:
                top = sorted(who.items(), key=lambda kv: -kv[1])[:8]
                said.append(f"served today per {what}: " + ", ".join(f"{k}: {n}" for k, n in top)
                            + (f" (+{len(who) - 8} more)" if len(who) > 8 else ""))
        kept = u.get("reserved_for_priority_0")
        if kept:
            names = {lim.counter: lim.name for lim in pool.limits}
            said.append("kept for priority 0: " + ", ".join(f"{n} {names.get(c, c)}" for c, n in kept.items()))
        pace = u.get("pace")
        if pace:
            said.append(f"pace: {pace['used']} used of {pace['allowed_so_far']} allowed so far today "
                        f"(burst {pace['burst']})")
        fc = u.get("forecast")
        if fc and fc.get("rate_per_h"):
            rate = f"{fc['rate_per_h']:g}/h"
            if fc.get("lasts"):
                said.append(f"forecast: at the last hour's rate ({rate}) the day lasts"
                            + ("" if lim_kind(pool) == "refill" else " until its reset"))
            elif fc.get("runs_out_at") is not None and fc["runs_out_at"] <= snap.now:
                said.append(f"forecast: the day is used up (last hour {rate})")
            else:
                at = time.strftime("%H:%M UTC", time.gmtime(fc["runs_out_at"]))
                said.append(f"forecast: at the last hour's rate ({rate}) the day runs out at {at}")
        if said:
            lines += ["", f"{pool.label}:"] + [f"  {line}" for line in said]
    for group, line in snap.waiting.items():
        total = sum(line.values())
        lines += ["", f"waiting in line for '{group}': {total} ("
                  + ", ".join(f"priority {p}: {n}" for p, n in line.items()) + ")"]
    return lines


def render_table(table: list[tuple]) -> str:
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    lines = []
    for n, row in enumerate(table):
        lines.append("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---- the earlier flat rows (kept for callers of quota_rows / render_rows) --------------------------------------

@dataclass(frozen=True)
class Row:
    pool: str
    limit: str
    used: int
    capacity: int
    resets_at: float | None
    state: str  # "ok" | "exhausted" | "blocked: ..." | "set aside: ..."

    def as_dict(self) -> dict:
        return {
            "pool": self.pool, "limit": self.limit, "used": self.used, "capacity": self.capacity,
            "remaining": max(0, self.capacity - self.used), "resets_at": self.resets_at, "state": self.state,
        }


def rows_of(snap: Snapshot) -> list[Row]:
    rows = [Row(d.model, "model", 0, 0, d.until, f"set aside: {d.reason}")
            for d in snap.deployments if d.state in ("cooling", "quarantined")]
    for pool in snap.pools:
        for lim in pool.limits:
            state = lim.state if not lim.reason else f"{lim.state}: {lim.reason}"
            rows.append(Row(pool.label, lim.name, lim.used, lim.limit, lim.resets_at, state))
    return rows


def quota_rows(store: SyncQuotaStore, plans: Iterable[DeploymentPlan]) -> list[Row]:
    """Flat rows: one per model set aside, one per counter of every distinct pool."""
    return rows_of(take_snapshot(store, plans))


def render_rows(rows: list[Row], now: float | None = None) -> str:
    now = time.time() if now is None else now
    table = [("pool / model", "limit", "used / limit", "resets (UTC)", "state")]
    for r in rows:
        usage = f"{r.used} / {r.capacity}" if r.capacity else "-"
        table.append((r.pool, r.limit, usage, when(r.resets_at, now), r.state))
    return render_table(table)
