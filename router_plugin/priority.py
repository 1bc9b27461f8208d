"""Priorities, daily pacing and fair shares: who may take what is left of a pool. Pure: no LiteLLM, no I/O.

The policy never counts anything itself. It only changes the ARGUMENTS of the one atomic reservation
(``store._codec.Ask``): a per-counter admission threshold (``ceilings``) below the counter's capacity, and more
counters the request must also fit (``extra``, a key's / user's / team's share of the pool's day, kept in the
pool's hash slot). So every limit stays exact across workers: the same Lua call checks them all, or none.

* **Reserve** (``priority: {reserve: 0.2}``): a request of priority > 0 is admitted on a counter only while
  ``used + cost <= capacity x (1 - reserve)``, on every counter of the pool (minute and day, requests and tokens);
  priority 0 (the default, interactive) may use the whole capacity.
* **Pace** (``pace: {openrouter: true}`` or ``{<pool or model>: {burst: N}}``) on a pool's requests-per-day counter:
  a UTC-day window (OpenRouter) admits while ``used + cost <= allowance(t) = burst + capacity x (elapsed fraction of
  the UTC day)`` (never above the capacity); a rolling day bucket (Groq, refilling at capacity / 24 h) admits while
  its level stays ``<= burst``, i.e. at the rate the day refills after the first ``burst``. Priority 0 may borrow
  beyond the pace by up to the reserve: its threshold is ``min(capacity, pace threshold + reserve x capacity)``.
  Priority > 0 gets ``min(pace threshold, capacity x (1 - reserve))``. ``burst`` defaults to an hour's share of the
  day (``ceil(capacity / 24)``).
* **Shares** (``shares: {per: key|user|team, openrouter: 0.5}``): each identity (a LiteLLM virtual key's hash, a
  user id, a team id: from the request metadata LiteLLM's proxy fills, never a raw key) may take at most
  ``floor(fraction x capacity)`` (at least 1) of the pool's requests-per-day counter: an extra counter of the same
  kind and window in the pool's slot. Requests without that identity are not limited by shares.

``describe(blocked)`` phrases a refusal that a ceiling or a share caused; ``retime(blocked)`` moves its time to
when the next paced slot opens (sooner than the day's reset).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .config import Pace, Policy, Shares
from .limits import DAY_S, Counter, DeploymentPlan, Limit, key_fingerprint
from .store._codec import Ask


#: Request metadata: the request's priority (0 = interactive, the default; higher = less urgent).
PRIORITY_KEY = "priority"
#: Metadata of a LiteLLM virtual key or team (``user_api_key_metadata`` / ``user_api_key_team_metadata`` in the
#: request metadata): the least urgent priority its requests get (a floor: a request may ask for a higher number).
KEY_PRIORITY_KEY = "router_plugin_priority"
#: Request metadata set by the proxy hook when the priority came from this header (so an error names it).
PRIORITY_HEADER = "x-router-plugin-priority"
PRIORITY_SOURCE_KEY = "router_plugin_priority_source"
MAX_PRIORITY = 2**31 - 1  # anything larger is surely a mistake

SHARE_PREFIX = "share:"
#: Where the identity of ``shares.per`` is in the request metadata (LiteLLM's proxy fills these from the virtual
#: key it authenticated and strips any the client sent: litellm_pre_call_utils.add_litellm_data_to_request).
IDENTITY_FIELDS = {
    "key": ("user_api_key_hash", "user_api_key"),
    "user": ("user_api_key_user_id",),
    "team": ("user_api_key_team_id",),
}
_EPS = 1e-6


class PriorityError(ValueError):
    """A request's priority is not an integer >= 0: the request is refused with a 400 saying so."""


# ---- the request's priority -------------------------------------------------------------------------------------


def _as_priority(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_PRIORITY else None
    if isinstance(value, float) and value.is_integer():
        return _as_priority(int(value))
    if isinstance(value, (str, bytes)):
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        text = text.strip()
        if text.isdigit() and text.isascii():
            return _as_priority(int(text))
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text[:30] + "…" if len(text) > 30 else text


_EXPECTED = "an integer >= 0 (0 = interactive, the default; higher = less urgent)"


def priority_problem(metadata: Any) -> str | None:
    """What is wrong with the request's priority, in one phrase (request_shape.py's convention); None if fine."""
    try:
        priority_of(metadata)
    except PriorityError as exc:
        return str(exc)
    return None


def priority_of(metadata: Any) -> int:
    """The request's priority: ``metadata["priority"]`` (through the proxy also the ``x-router-plugin-priority``
    header), at least the ``router_plugin_priority`` of its virtual key's and team's metadata. ``PriorityError``
    (one line) for a value that is not an integer >= 0."""
    if not isinstance(metadata, Mapping):
        return 0
    asked = 0
    value = metadata.get(PRIORITY_KEY)
    if value is not None:
        parsed = _as_priority(value)
        if parsed is None:
            source = metadata.get(PRIORITY_SOURCE_KEY)
            where = f"header {PRIORITY_HEADER}" if source == "header" else "'metadata.priority'"
            raise PriorityError(f"{where} must be {_EXPECTED}, got {_shown(value)}")
        asked = parsed
    floor = 0
    for name, what in (("user_api_key_metadata", "virtual key"), ("user_api_key_team_metadata", "team")):
        block = metadata.get(name)
        if isinstance(block, Mapping) and block.get(KEY_PRIORITY_KEY) is not None:
            parsed = _as_priority(block[KEY_PRIORITY_KEY])
            if parsed is None:
                raise PriorityError(f"the {what}'s metadata {KEY_PRIORITY_KEY} must be {_EXPECTED}, got "
                                    f"{_shown(block[KEY_PRIORITY_KEY])} (the proxy admin sets it on the {what})")
            floor = max(floor, parsed)
    return max(asked, floor)


def priority_from_headers(headers: Any) -> str | None:
    """The ``x-router-plugin-priority`` header's value (any case), else None."""
    if not isinstance(headers, Mapping):
        return None
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() == PRIORITY_HEADER:
            return value if isinstance(value, str) else str(value)
    return None


def share_identity(metadata: Any, per: str) -> tuple[str, str] | None:
    """``(fingerprint for the Redis key, label for a refusal)`` of the request's key / user / team, else None.

    The fingerprint is a one-way hash (the key's LiteLLM hash is hashed again), so no key reaches Redis or a log;
    a key is labelled by its alias, else the fingerprint's first 8 characters."""
    if not isinstance(metadata, Mapping):
        return None
    value = next((metadata.get(n) for n in IDENTITY_FIELDS.get(per, ()) if metadata.get(n)), None)
    if value is None or value == "":
        return None
    fp = key_fingerprint(f"{per}:{value}")
    if per == "key":
        alias = metadata.get("user_api_key_alias")
        label = str(alias)[:40] if isinstance(alias, str) and alias else fp[:8]
    else:
        label = str(value)[:40]
    return fp, label


# ---- which pool a setting names -------------------------------------------------------------------------------


def pool_names(plan: DeploymentPlan) -> tuple[str, ...]:
    """The names a ``pace`` / ``shares`` entry may use for this deployment's pool, most specific first."""
    model = plan.model
    bare = model.split("/", 1)[1] if "/" in model else model
    names = [model, bare]
    if plan.provider:
        names.append(plan.provider)
    return tuple(dict.fromkeys(names))


def _lookup(table: Mapping[str, Any], plan: DeploymentPlan) -> Any:
    for name in pool_names(plan):
        if name in table:
            return table[name]
    return None


def _day_counters(plan: DeploymentPlan) -> list[Counter]:
    """The pool's requests-per-day counters (OpenRouter ``day``, Groq ``rpd``, a model override's ``rpd``)."""
    return [c for c in plan.counters if c.limit.window_s == DAY_S and c.limit.unit == "requests"]


def _pool_word(plan: DeploymentPlan) -> str:
    return "OpenRouter" if plan.provider == "openrouter" else plan.model


# ---- the extra counters in the request's state (plain values: LiteLLM copies and serialises metadata) ------


def extra_to_state(counters: Any) -> list[list]:
    """A reservation's extra counters (a share) as plain values for the request's state, so that the callbacks
    settle and refund them with the pool's counters (an attempt that never left gives its share back too)."""
    return [[c.key, c.limit.name, c.limit.capacity, c.limit.window_s, c.limit.kind, c.limit.unit, c.label]
            for c in counters or ()]


def extra_from_state(value: Any) -> tuple[Counter, ...]:
    """The counters :func:`extra_to_state` wrote; anything malformed is left out (never fails a callback)."""
    out = []
    for item in value if isinstance(value, (list, tuple)) else ():
        try:
            key, name, capacity, window_s, kind, unit, label = item
            out.append(Counter(str(key), Limit(str(name), int(capacity), int(window_s), kind, unit), str(label)))
        except (TypeError, ValueError):
            continue
    return tuple(out)


# ---- the admission policy ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Paced:
    capacity: float
    allowance: float  # the pace threshold now (before the reserve)


class Admission:
    """Builds each candidate's :class:`Ask`. Stateless apart from the settings: safe to share across requests."""

    def __init__(self, policy: Policy | None = None):
        self.policy = policy or Policy()

    @classmethod
    def from_settings(cls, settings: Any) -> "Admission":
        """From ``config.Settings`` (its ``policy``); anything without one (an older Settings) gets no policy."""
        policy = getattr(settings, "policy", None)
        return cls(policy if isinstance(policy, Policy) else Policy())

    # -- the Ask ------------------------------------------------------------------------------------------------

    def ask(self, plan: DeploymentPlan, tokens: int, metadata: Any = None, now_s: float | None = None) -> Ask:
        policy = self.policy
        if not policy.active or not plan.metered:
            return Ask(plan, tokens)
        now_s = time.time() if now_s is None else now_s
        priority = priority_of(metadata)
        reserve = policy.reserve
        ceilings: dict[str, float] = {}
        if priority > 0 and reserve > 0:
            for counter in plan.counters:
                ceilings[counter.key] = counter.limit.capacity * (1 - reserve)
        pace = _lookup(policy.pace, plan)
        if pace is not None:
            for counter in _day_counters(plan):
                paced = self._paced(counter, pace, now_s)
                cap = paced.capacity
                if priority == 0:
                    ceiling = min(cap, paced.allowance + reserve * cap)
                else:
                    ceiling = min(paced.allowance, cap * (1 - reserve))
                if ceiling < cap - _EPS:
                    ceilings[counter.key] = ceiling
        extra: tuple[Counter, ...] = ()
        shares = policy.shares
        if shares is not None and shares.fractions:
            fraction = _lookup(shares.fractions, plan)
            who = share_identity(metadata, shares.per) if fraction is not None else None
            if who is not None:
                extra = tuple(self._share_counter(plan, counter, fraction, shares.per, who)
                              for counter in _day_counters(plan))
        return Ask(plan, tokens, ceilings, extra)

    @staticmethod
    def _paced(counter: Counter, pace: Pace, now_s: float) -> _Paced:
        limit = counter.limit
        cap = float(limit.capacity)
        burst = pace.burst if pace.burst is not None else max(1, math.ceil(cap / 24))
        if limit.kind == "fixed":
            elapsed = (now_s % limit.window_s) / limit.window_s
            return _Paced(cap, burst + cap * elapsed)
        return _Paced(cap, float(burst))  # a rolling day: cap the level; it refills at capacity / window

    @staticmethod
    def _share_counter(plan: DeploymentPlan, counter: Counter, fraction: float, per: str,
                       who: tuple[str, str]) -> Counter:
        fp, label = who
        limit = counter.limit
        capacity = max(1, math.floor(fraction * limit.capacity + _EPS))
        return Counter(f"{SHARE_PREFIX}{per}:{fp}:{counter.key}",
                       Limit(f"share:{limit.name}", capacity, limit.window_s, limit.kind, limit.unit),
                       f"{per} {label}'s share of the {_pool_word(plan)} day")

    # -- refusals -----------------------------------------------------------------------------------------------

    def kind_of(self, blocked: Any) -> str | None:
        """``"share"``, ``"pace"``, ``"reserve"`` for a block this policy caused, else None (the pool is full)."""
        counter = getattr(blocked, "counter", None)
        if counter is None:
            return None
        if counter.key.startswith(SHARE_PREFIX):
            return "share"
        ceiling = getattr(blocked, "ceiling", None)
        if ceiling is None or ceiling >= counter.limit.capacity - _EPS:
            return None
        pace = _lookup(self.policy.pace, blocked.plan)
        if pace is not None and counter in _day_counters(blocked.plan):
            reserved = counter.limit.capacity * (1 - self.policy.reserve)
            if self.policy.reserve <= 0 or abs(ceiling - reserved) > _EPS:
                return "pace"
        return "reserve" if self.policy.reserve > 0 else None

    def describe(self, blocked: Any) -> str | None:
        """The refusal's phrase for a block this policy caused (None: an ordinary full or blocked counter)."""
        kind = self.kind_of(blocked)
        if kind is None:
            return None
        if kind == "share":
            cap = blocked.counter.limit.capacity
            used = getattr(blocked, "used", None)
            used = cap if used is None else min(cap, int(used))
            return f"{blocked.counter.label} ({used} of {cap})"
        if kind == "reserve":
            return f"kept for priority-0 requests (reserve {self.policy.reserve:.0%})"
        at = time.strftime("%H:%M:%S UTC", time.gmtime(self.opens_at_ms(blocked) / 1000))
        return f"paced: next slot at {at}"

    def opens_at_ms(self, blocked: Any) -> int:
        """When the request that got ``blocked`` can next be admitted, as far as the policy can tell: for a paced
        UTC-day counter the moment its threshold grows past what is used (sooner than the day's reset); else the
        store's own time (a refill bucket's store time already counts with the threshold)."""
        until = int(blocked.until_ms)
        if self.kind_of(blocked) != "pace" or blocked.counter.limit.kind != "fixed" or until < 0:
            return until
        limit = blocked.counter.limit
        cap, ceiling = float(limit.capacity), float(blocked.ceiling)
        used = getattr(blocked, "used", None)
        cost = 1.0  # a requests counter
        # Unknown use: the request did not fit, so used > ceiling - cost; with whole requests the next threshold
        # that can admit it is the next whole number above the current one (exact when the pace was followed).
        target = float(used) + cost if used is not None else math.floor(ceiling + _EPS) + cost
        top = cap if self._borrowing(blocked) else cap * (1 - self.policy.reserve)
        if target > top + _EPS:
            return until  # not before the day's reset
        rate_per_ms = cap / limit.window_ms
        at = int(blocked.now_ms + math.ceil(max(0.0, target - ceiling) / rate_per_ms))
        return max(int(blocked.now_ms) + 1, min(until, at))

    def _borrowing(self, blocked: Any) -> bool:
        """Was the threshold a priority-0 one (the pace plus the reserve)?"""
        pace = _lookup(self.policy.pace, blocked.plan)
        if pace is None or self.policy.reserve <= 0:
            return False
        paced = self._paced(blocked.counter, pace, blocked.now_ms / 1000)
        return abs(float(blocked.ceiling) - min(paced.capacity, paced.allowance + self.policy.reserve *
                                                 paced.capacity)) <= max(_EPS, paced.capacity * 5 / DAY_S)

    def retime(self, blocked: Any) -> Any:
        """``blocked`` with its time moved to when the next paced slot opens (the refusal's Retry-After then says
        that time, not the day's reset) and ``why`` the policy's reason, worded to follow the counter's label and
        precede "until <time>" in a refusal: ``kept for priority-0 requests (reserve 20%)``, ``paced``, ``(25 of
        25)`` (a share's label already says whose share). Unchanged when the policy did not cause it."""
        kind = self.kind_of(blocked)
        if kind is None:
            return blocked
        phrase = self.describe(blocked) or ""
        why = {"pace": "paced", "share": phrase[len(blocked.counter.label):].strip()}.get(kind, phrase)
        return replace(blocked, until_ms=self.opens_at_ms(blocked), why=why)


__all__ = ["Admission", "Ask", "Pace", "Policy", "PriorityError", "Shares", "describe", "priority_of",
           "priority_problem", "share_identity"]


_DEFAULT = Admission()


def describe(blocked: Any, admission: Admission | None = None) -> str | None:
    """Module-level form of :meth:`Admission.describe` (the default policy knows only shares)."""
    return (admission or _DEFAULT).describe(blocked)
