"""Quota tables for humans and machines: what is left in each pool, when it resets, what is set aside.

Shared by ``router-plugin demo`` and ``router-plugin status``; reads the store, never spends a request.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from .limits import DeploymentPlan
from .store import Blocked, Reservation, SyncQuotaStore
from .strategy import human_duration


@dataclass(frozen=True)
class Row:
    pool: str
    limit: str
    used: int
    capacity: int
    resets_at: float | None
    state: str  # "ok" | "exhausted" | "blocked: ..." | "model set aside: ..."

    def as_dict(self) -> dict:
        return {
            "pool": self.pool, "limit": self.limit, "used": self.used, "capacity": self.capacity,
            "remaining": max(0, self.capacity - self.used), "resets_at": self.resets_at, "state": self.state,
        }


def quota_rows(store: SyncQuotaStore, plans: Iterable[DeploymentPlan]) -> list[Row]:
    """One row per counter of every distinct pool, plus one per model that is cooling down or quarantined."""
    rows: list[Row] = []
    seen_counters: set[tuple[str, str]] = set()
    for plan in plans:
        if not plan.metered:
            continue
        outcome = store.peek(plan)
        if isinstance(outcome, Blocked) and outcome.counter is None:
            rows.append(Row(plan.model, "model", 0, 0, outcome.until_ms / 1000, f"set aside: {outcome.why}"))
            outcome = store.peek(plan, counters_only=True)  # the pool's counters are still worth showing
        for counter in plan.counters:
            if (plan.slot, counter.key) in seen_counters:
                continue
            seen_counters.add((plan.slot, counter.key))
            rows.append(_row(plan, counter, outcome))
    return rows


def _row(plan: DeploymentPlan, counter, outcome) -> Row:
    name = _LIMIT_NAMES.get(counter.limit.name, counter.limit.name)
    cap = counter.limit.capacity
    if isinstance(outcome, Reservation):
        state = next((s for s in outcome.states if s.counter.key == counter.key), None)
        left = state.remaining if state else cap
        used = cap - left
        return Row(plan.pool_label, name, used, cap, state.reset_ms / 1000 if state else None,
                   "exhausted" if left <= 0 else "ok")
    if outcome.counter is not None and outcome.counter.key == counter.key:
        return Row(plan.pool_label, name, cap, cap, outcome.until_ms / 1000, f"blocked: {outcome.why}")
    return Row(plan.pool_label, name, 0, cap, None, "unknown (another limit is blocked)")


_LIMIT_NAMES = {"minute": "requests/min", "day": "requests/day", "rpm": "requests/min", "rpd": "requests/day",
                "tpm": "tokens/min", "tpd": "tokens/day"}


def render_rows(rows: list[Row], now: float | None = None) -> str:
    now = time.time() if now is None else now
    table = [("pool / model", "limit", "used / limit", "resets (UTC)", "state")]
    for r in rows:
        resets = "-"
        if r.resets_at and r.resets_at > now:
            resets = f"{time.strftime('%H:%M:%S', time.gmtime(r.resets_at))} (in {human_duration(r.resets_at - now)})"
        usage = f"{r.used} / {r.capacity}" if r.capacity else "-"
        table.append((r.pool, r.limit, usage, resets, r.state))
    return render_table(table)


def render_table(table: list[tuple]) -> str:
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    lines = []
    for n, row in enumerate(table):
        lines.append("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
