"""Keys, script arguments and replies of the quota scripts: pure functions shared by the async and sync stores."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..limits import Counter, DeploymentPlan, Limit

SCRIPTS = {name: (Path(__file__).with_name(f"{name}.lua")).read_text() for name in ("reserve", "adjust", "mark")}


def _indent(src: str) -> str:
    return "\n".join("  " + line if line.strip() else line for line in src.splitlines())


# adjust.lua then reserve.lua in one call (deferred settles folded into a reservation, batch.py): each script's
# text unchanged inside a function of its own KEYS / ARGV.
# KEYS: the adjust keys (ARGV[1] of them), then the reservation's; ARGV[2]: how many ARGV the adjust part has,
# then the adjust ARGV, then the reservation's. Reply: reserve.lua's.
SCRIPTS["adjust_reserve"] = f"""local function adjust(KEYS, ARGV)
{_indent(SCRIPTS["adjust"])}
end
local function reserve(KEYS, ARGV)
{_indent(SCRIPTS["reserve"])}
end
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local ak, aa, rk, ra = {{}}, {{}}, {{}}, {{}}
for i = 1, #KEYS do
  if i <= nk then ak[#ak + 1] = KEYS[i] else rk[#rk + 1] = KEYS[i] end
end
for i = 3, #ARGV do
  if i - 2 <= na then aa[#aa + 1] = ARGV[i] else ra[#ra + 1] = ARGV[i] end
end
adjust(ak, aa)
return reserve(rk, ra)
"""


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
    extra: tuple[Counter, ...] = ()  # the Ask's extra counters, also holding this request's cost (same slot)

    @property
    def counters(self) -> tuple[Counter, ...]:
        """Every counter holding this request's cost: the plan's, then the Ask's extra ones."""
        return self.plan.counters + self.extra if self.extra else self.plan.counters

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
    ceiling: float | None = None  # refused under this admission threshold, below the counter's capacity (Ask)

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
    _counters: dict = field(default_factory=dict, repr=False)

    def counter(self, plan: DeploymentPlan, counter: Counter) -> str:
        key = (plan.slot, counter.key)  # every reservation and settle names its counters: built once
        name = self._counters.get(key)
        if name is None:
            name = f"{self.prefix}{{{plan.slot}}}:c:{counter.key}"
            if len(self._counters) > 100_000:  # bounded (extra counters may be per key or user)
                self._counters.clear()
            self._counters[key] = name
        return name

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


@dataclass(frozen=True)
class Ask:
    """One candidate of a routing decision, for ``reserve_first``.

    ``ceilings``: Counter.key -> admission threshold for THIS request (<= the capacity): the check and the wait it
    reports use it, a refill bucket still drains at capacity/window. ``extra``: more counters this request must
    also fit (keyed in the plan's slot, so still one script call). ``peek``: report only — never reserved, its
    reason is answered when it is blocked (the walk's deployments that answered 429 in this request).
    """

    plan: DeploymentPlan
    tokens: int
    ceilings: Mapping[str, float] = field(default_factory=dict)
    extra: tuple[Counter, ...] = ()
    peek: bool = False

    @property
    def counters(self) -> tuple[Counter, ...]:
        return self.plan.counters + self.extra if self.extra else self.plan.counters


# Modes of a candidate in reserve.lua.
RESERVE, DRY, COUNTERS_ONLY, REPORT = "0", "1", "2", "3"

def _counter_args(counter: Counter, cost_tokens: int, ceilings: Mapping[str, float] | None, dry: bool) -> list:
    limit = counter.limit
    cost = 0 if dry else (1 if limit.unit == "requests" else cost_tokens)
    ceiling = limit.capacity
    if ceilings:
        wanted = ceilings.get(counter.key)
        if wanted is not None and wanted < ceiling:
            ceiling = max(0, wanted)
    return [_kind(limit), limit.capacity, limit.window_ms, cost, ceiling]


def candidate_args(ask: Ask, mode: str) -> list:
    """One candidate's part of reserve.lua's ARGV."""
    counters = ask.counters
    dry = mode != RESERVE
    args: list = [mode, len(counters)]
    for counter in counters:
        args += _counter_args(counter, ask.tokens, ask.ceilings, dry)
    return args


def candidate_keys(keys: "KeySpace", ask: Ask) -> list[str]:
    base = keys.reserve_keys(ask.plan)
    if not ask.extra:
        return base
    return base + [keys.counter(ask.plan, c) for c in ask.extra]


def first_call(keys: "KeySpace", asks: Sequence[Ask], margin_ms: int) -> tuple[list[str], list]:
    """KEYS and ARGV of one reserve.lua call over ``asks`` in order."""
    all_keys: list[str] = []
    args: list = [len(asks), int(margin_ms)]
    for ask in asks:
        all_keys += candidate_keys(keys, ask)
        args += candidate_args(ask, REPORT if ask.peek else RESERVE)
    return all_keys, args


def dry_first_call(keys: "KeySpace", asks: Sequence[Ask], margin_ms: int) -> tuple[list[str], list]:
    """KEYS and ARGV of a reserve.lua call that checks ``asks`` as ``first_call`` would, at each one's real cost,
    and writes nothing (mode DRY with the cost: the first that fits is named, none fits: every reason)."""
    all_keys: list[str] = []
    args: list = [len(asks), int(margin_ms)]
    for ask in asks:
        all_keys += candidate_keys(keys, ask)
        counters = ask.counters
        args += [REPORT if ask.peek else DRY, len(counters)]
        for counter in counters:
            args += _counter_args(counter, ask.tokens, ask.ceilings, ask.peek)
    return all_keys, args


def slot_groups(asks: Sequence[Ask]) -> list[list[Ask]]:
    """Redis Cluster: consecutive candidates of one slot, in order (each call's keys must share a slot). An
    unmetered candidate (slot "") has a key of its own slot: alone."""
    groups: list[list[Ask]] = []
    for ask in asks:
        slot = ask.plan.slot
        if groups and slot and groups[-1][0].plan.slot == slot:
            groups[-1].append(ask)
        else:
            groups.append([ask])
    return groups


def parse_first(asks: Sequence[Ask], reply: Sequence) -> Reservation | list[Blocked]:
    """reserve.lua's reply: the Reservation of the chosen candidate, or every candidate's Blocked in order
    (report-only candidates that fit are left out)."""
    now_ms = int(reply[1])
    if int(reply[0]):
        ask = asks[int(reply[2]) - 1]
        values = [int(v) for v in reply[4:]]
        counters = ask.counters
        states = tuple(CounterState(counter, values[2 * i], values[2 * i + 1]) for i, counter in enumerate(counters))
        return Reservation(ask.plan, ask.tokens, now_ms, states, int(reply[3]), ask.extra)
    out: list[Blocked] = []
    for j, ask in enumerate(asks):
        base = 2 + 3 * j
        if base + 2 >= len(reply):
            break
        index, until_ms = int(reply[base]), int(reply[base + 1])
        if index < 0:
            continue  # report only, and it fits
        raw = reply[base + 2]
        why = raw.decode() if isinstance(raw, bytes) else str(raw)
        counter = ask.counters[index - 1] if index > 0 else None
        ceiling = None
        if why == "ceiling" and counter is not None:
            why = "full"
            ceiling = _counter_args(counter, 0, ask.ceilings, True)[4]
        out.append(Blocked(ask.plan, counter, until_ms, why, now_ms, ceiling))
    return out


def reserve_call(keys: "KeySpace", plan: DeploymentPlan, tokens: int, margin_ms: int, dry: bool = False,
                 counters_only: bool = False) -> tuple[list[str], list, Ask]:
    """The single-deployment call of ``reserve(plan, tokens, dry, counters_only)``: ``dry`` reports without
    writing; ``counters_only`` also ignores the model's cooldown (status tables)."""
    ask = Ask(plan, tokens)
    mode = COUNTERS_ONLY if counters_only else (DRY if dry else RESERVE)
    return keys.reserve_keys(plan), [1, int(margin_ms), *candidate_args(ask, mode)], ask


def parse_one(ask: Ask, reply: Sequence) -> Reservation | Blocked:
    outcome = parse_first([ask], reply)
    return outcome if isinstance(outcome, Reservation) else outcome[0]


def reserve_args(plan: DeploymentPlan, tokens: int, margin_ms: int, dry: bool = False,
                 counters_only: bool = False) -> list:
    """ARGV of a one-deployment reserve.lua call (its KEYS: ``KeySpace.reserve_keys(plan)``)."""
    return reserve_call(KeySpace(), plan, tokens, margin_ms, dry, counters_only)[1]


def parse_reserve(plan: DeploymentPlan, tokens: int, reply: Sequence) -> Reservation | Blocked:
    """The reply of a ``reserve_args`` call."""
    return parse_one(Ask(plan, tokens), reply)


def adjust_args(ops: Iterable[tuple[Counter, str, float, int]]) -> list:
    """ops: (counter, "+" or ">", value, window_index)."""
    ops = list(ops)
    args: list = [len(ops)]
    for counter, op, value, window in ops:
        limit = counter.limit
        args += [_kind(limit), limit.capacity, limit.window_ms, op, value, window]
    return args


def adjust_call(keys: "KeySpace", items: Iterable) -> tuple[list[str], list]:
    """KEYS and ARGV of one adjust.lua call carrying every deferred item (``batch.Deferred``) in order."""
    all_keys: list[str] = []
    ops: list = []
    for item in items:
        for op in item.ops:
            all_keys.append(keys.counter(item.plan, op[0]))
            ops.append(op)
    return all_keys, adjust_args(ops)


def folded_call(adjust: tuple[list[str], list], reserve: tuple[list[str], list]) -> tuple[list[str], list]:
    """KEYS and ARGV of ``adjust_reserve``: an adjust call, then a reserve call, in one script."""
    (akeys, aargs), (rkeys, rargs) = adjust, reserve
    return akeys + rkeys, [len(akeys), len(aargs), *aargs, *rargs]


def settle_ops(reservation: Reservation, actual_tokens: int,
               seen: Iterable = ()) -> list[tuple[Counter, str, float, int]]:
    """Replace the reserved token estimate with the real usage on every token counter; then calibrate from
    ``seen`` (the same reply's rate-limit headers), all in one adjust call."""
    delta = actual_tokens - reservation.tokens
    ops = [] if delta == 0 else [(c, "+", delta, reservation.window_index(c.limit))
                                 for c in reservation.counters if c.limit.unit == "tokens"]
    return ops + calibrate_ops(reservation.plan, seen)


def refund_ops(reservation: Reservation, requests: bool) -> list[tuple[Counter, str, float, int]]:
    """Give back the tokens (nothing was generated) and, only if the call never left, the request too."""
    counters = reservation.counters
    ops = [(c, "+", -reservation.tokens, reservation.window_index(c.limit)) for c in counters
           if c.limit.unit == "tokens"]
    if requests:
        ops += [(c, "+", -1, reservation.window_index(c.limit)) for c in counters if c.limit.unit == "requests"]
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
