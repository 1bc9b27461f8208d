"""Keys, script arguments and replies of the quota scripts: pure functions shared by the async and sync stores."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..limits import Counter, DeploymentPlan, Limit

SCRIPTS = {name: (Path(__file__).with_name(f"{name}.lua")).read_text() for name in ("reserve", "adjust", "mark")}


@dataclass(frozen=True)
class CounterState:
    counter: Counter
    remaining: int
    reset_ms: int


@dataclass(frozen=True)
class Reservation:
    """Granted: the counters now hold this request's cost. Settle or refund it after the call."""

    plan: DeploymentPlan
    tokens: int  # reserved on every token counter
    now_ms: int
    states: tuple[CounterState, ...] = ()
    strikes: int = 0  # the model's recent failures, still remembered: its first success clears them (circuit.py)

    def window_index(self, limit: Limit) -> int:
        return self.now_ms // limit.window_ms

    def remaining(self, name: str) -> CounterState | None:
        return next((s for s in self.states if s.counter.limit.name == name), None)


@dataclass(frozen=True)
class Blocked:
    """Refused: ``counter`` (None = the model itself is cooling down or quarantined) is exhausted until ``until_ms``."""

    plan: DeploymentPlan
    counter: Counter | None
    until_ms: int  # -1: the request can never fit (larger than the whole limit)
    why: str
    now_ms: int

    @property
    def never(self) -> bool:
        return self.until_ms < 0

    @property
    def wait_s(self) -> float:
        return max(0.0, (self.until_ms - self.now_ms) / 1000.0)


@dataclass
class KeySpace:
    """Redis key names. Every key of a deployment carries its slot as a hash tag, so Redis Cluster runs the scripts."""

    prefix: str = "rp:"
    _cache: dict = field(default_factory=dict, repr=False)

    def counter(self, plan: DeploymentPlan, counter: Counter) -> str:
        return f"{self.prefix}{{{plan.slot}}}:c:{counter.key}"

    def model(self, plan: DeploymentPlan) -> str:
        return f"{self.prefix}{{{plan.slot}}}:model:{plan.model.split('/', 1)[-1]}"

    def clamped(self, day: int) -> str:
        """Hash (field ``n``): provider values bounded on UTC day ``day`` (``router-plugin status``); kept 2 days."""
        return f"{self.prefix}clamped:{day}"

    def reserve_keys(self, plan: DeploymentPlan) -> list[str]:
        keys = self._cache.get(plan)
        if keys is None:
            keys = [self.model(plan)] + [self.counter(plan, c) for c in plan.counters]
            self._cache[plan] = keys
        return keys


def _kind(limit: Limit) -> str:
    return "f" if limit.kind == "fixed" else "r"


def reserve_args(
    plan: DeploymentPlan, tokens: int, margin_ms: int, dry: bool = False, counters_only: bool = False
) -> list:
    """``dry``: report without writing; ``counters_only``: also ignore the model's cooldown (status tables)."""
    args: list = [len(plan.counters), "2" if counters_only else ("1" if dry else "0"), int(margin_ms)]
    for counter in plan.counters:
        limit = counter.limit
        cost = 0 if dry else (1 if limit.unit == "requests" else tokens)
        args += [_kind(limit), limit.capacity, limit.window_ms, cost]
    return args


def parse_reserve(plan: DeploymentPlan, tokens: int, reply: Sequence) -> Reservation | Blocked:
    granted, now_ms = int(reply[0]), int(reply[1])
    if granted:
        values = [int(v) for v in reply[2:]]
        n = len(plan.counters)
        states = tuple(CounterState(counter, values[2 * i], values[2 * i + 1]) for i, counter in enumerate(plan.counters))
        strikes = values[2 * n] if len(values) > 2 * n else 0
        return Reservation(plan, tokens, now_ms, states, strikes)
    index, until_ms = int(reply[2]), int(reply[3])
    why = reply[4].decode() if isinstance(reply[4], bytes) else str(reply[4])
    counter = plan.counters[index - 1] if index > 0 else None
    return Blocked(plan, counter, until_ms, why, now_ms)


def adjust_args(ops: Iterable[tuple[Counter, str, float, int]]) -> list:
    """ops: (counter, "+" or ">", value, window_index)."""
    ops = list(ops)
    args: list = [len(ops)]
    for counter, op, value, window in ops:
        limit = counter.limit
        args += [_kind(limit), limit.capacity, limit.window_ms, op, value, window]
    return args


def settle_ops(reservation: Reservation, actual_tokens: int,
               seen: Iterable = ()) -> list[tuple[Counter, str, float, int]]:
    """Replace the reserved token estimate with the real usage on every token counter; then calibrate from
    ``seen`` (the same reply's rate-limit headers), all in one adjust call."""
    delta = actual_tokens - reservation.tokens
    ops = [] if delta == 0 else [(c, "+", delta, reservation.window_index(c.limit))
                                 for c in reservation.plan.token_counters]
    return ops + calibrate_ops(reservation.plan, seen)


def refund_ops(reservation: Reservation, requests: bool) -> list[tuple[Counter, str, float, int]]:
    """Give back the tokens (nothing was generated) and, only if the call never left, the request too."""
    ops = [(c, "+", -reservation.tokens, reservation.window_index(c.limit)) for c in reservation.plan.token_counters]
    if requests:
        ops += [
            (c, "+", -1, reservation.window_index(c.limit))
            for c in reservation.plan.counters
            if c.limit.unit == "requests"
        ]
    return [op for op in ops if op[2] != 0]


def calibrate_ops(plan: DeploymentPlan, facts: Iterable) -> list[tuple[Counter, str, float, int]]:
    """Provider says ``remaining`` of ``capacity`` is left: raise our count to at least what it has seen used.

    Only ever raises (other workers' in-flight requests are in our count but not yet in the provider's).
    """
    by_name = {c.limit.name: c for c in plan.counters}
    ops = []
    for fact in facts:
        counter = by_name.get(fact.limit)
        if counter is None:
            continue
        cap = counter.limit.capacity
        provider_cap = fact.capacity or cap
        if provider_cap <= 0:
            continue
        used = cap - min(fact.remaining, provider_cap) * cap / provider_cap
        if used > 0:
            ops.append((counter, ">", round(used, 3), 0))
    return ops


def block_args(until_ms: int, why: str, for_ms: int = 0) -> list:
    """mark.lua arguments that block a counter until ``until_ms`` (an absolute time the provider gave, e.g.
    OpenRouter's X-RateLimit-Reset) or, with ``for_ms``, for that long from Redis ``TIME`` (a relative wait the
    provider gave, e.g. Groq's ``7.66s``: never turned into a time on a worker's clock)."""
    if for_ms > 0:
        return mark_args(0, for_ms, False, for_ms, why)
    return mark_args(until_ms, 0, False, 0, why)


def mark_args(until_ms: int, base_ms: int, escalate: bool, max_ms: int, why: str) -> list:
    return [int(until_ms), int(base_ms), "1" if escalate else "0", int(max_ms), why[:300]]
