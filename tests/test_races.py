"""Races and the admission invariant of the quota scripts.

* a hypothesis property test: random sequences of reserve / settle / refund / calibrate / block / cool / peek and
  clock moves, run by the real Lua scripts (fakeredis's Lua 5.1, time from a patched clock) and by the in-process
  twin (``store/local.py``, the fail_open limiter). The two must give identical replies, and a simple model of
  each limit must never see more admitted than the limit in any window:
    - fixed window (OpenRouter account minute / day): units admitted in window w, plus units admitted within the
      arrival margin before w's start (they may reach the provider in w), never exceed the capacity;
    - refill bucket (Groq rpm / rpd / tpm / tpd): the provider's plain token bucket, where each grant ARRIVES at its
      reservation time plus a delay in [0, arrival margin] drawn by hypothesis (settles, refunds and calibrations
      come after the arrival of what they correct), never holds more than the capacity after an arrival;
    - nothing is admitted while one of the deployment's counters is blocked or the model is cooling down.
* a stress test: 8 processes x 32 concurrent coroutines reserving (and settling) against a real redis-server with
  limits small enough to hit many times, windows of 1.5-6 s so that many windows pass; every grant's Redis time is
  recorded and the same invariants are checked across all processes.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import random
import time
from collections import defaultdict
from unittest import mock

import fakeredis
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from router_plugin.limits import Counter, DeploymentPlan, Limit, PlanInputs, plan_for
from router_plugin.providers.facts import Remaining
from router_plugin.store import Blocked, QuotaStore, Reservation, StoreTarget, SyncQuotaStore
from router_plugin.store.local import LocalQuotaStore


def fixed(key: str, cap: int, window_s: float, unit: str = "requests") -> Counter:
    return Counter(key, Limit(key, cap, window_s, "fixed", unit), f"{key} limit")


def refill(key: str, cap: int, window_s: float, unit: str) -> Counter:
    return Counter(key, Limit(key, cap, window_s, "refill", unit), f"{key} limit")



def short_plan(name: str, slot: str, counters: tuple[Counter, ...]) -> DeploymentPlan:
    return DeploymentPlan(name, "chat", name, "openrouter" if slot.startswith("or") else "groq", slot, name, counters)


# Windows of a second or a few: the property test crosses many of them. (The real plans have the same shapes
# with minute / day windows: plan_for in limits.py.)
OR_SHORT = short_plan("openrouter/a:free", "or:acct", (fixed("minute", 3, 1), fixed("day", 7, 5)))
OR_SHORT_B = short_plan("openrouter/b:free", "or:acct", OR_SHORT.counters)  # same account pool, other model
GQ_SHORT = short_plan("groq/m", "gq:org:m", (
    refill("rpm", 4, 1, "requests"), refill("rpd", 10, 6, "requests"),
    refill("tpm", 100, 1, "tokens"), refill("tpd", 300, 6, "tokens"),
))
PLANS = (OR_SHORT, OR_SHORT_B, GQ_SHORT)
START_MS = 1_795_780_810_000  # 2026-11-26 12:00:10 UTC


class Model:
    """The limits as a provider applies them, kept independently of the store's code.

    A grant reaches the provider ``delay`` ms after its reservation (0 <= delay <= the arrival margin): the refill
    buckets take arrivals in time order, pending ones wait until the clock passes them.
    """

    def __init__(self, margin_ms: int):
        self.margin = margin_ms
        self.fixed_used: dict[tuple[str, int], float] = defaultdict(float)  # (counter key, window) -> units
        self.fixed_spill: dict[tuple[str, int], float] = defaultdict(float)
        self.level: dict[str, tuple[float, int]] = {}  # refill counter key -> (level, at_ms)
        self.pending: dict[str, list[tuple[int, float]]] = defaultdict(list)  # refill key -> [(arrival_ms, cost)]
        self.caps: dict[str, Limit] = {}
        self.blocked: dict[str, int] = defaultdict(int)  # redis key -> until_ms

    def _drained(self, key: str, limit: Limit, now: int) -> float:
        level, at = self.level.get(key, (0.0, now))
        return max(0.0, level - (now - at) * limit.capacity / limit.window_ms)

    def _fixed_key(self, key: str, limit: Limit, now: int) -> tuple[str, int]:
        w = now // limit.window_ms
        k = (key, w)
        if k not in self.fixed_used:
            self.fixed_used[k] = self.fixed_spill.get((key, w - 1), 0.0)
        return k

    def arrive(self, key: str, until: float) -> None:
        """Deliver the pending arrivals of ``key`` up to ``until`` ms, in time order, to the provider's bucket."""
        limit = self.caps.get(key)
        queue = sorted(self.pending.get(key, ()))
        while queue and queue[0][0] <= until:
            at, cost = queue.pop(0)
            level = self._drained(key, limit, at) + cost
            self.level[key] = (level, at)
            assert level <= limit.capacity + 1e-6, (
                f"{key}: the provider's bucket at {level:.3f} > {limit.capacity} (arrival at +{at - START_MS} ms)"
            )
        self.pending[key] = queue

    def arrive_all(self) -> None:
        for key in list(self.pending):
            self.arrive(key, math.inf)

    def grant(self, keys: dict, plan: DeploymentPlan, tokens: int, now: int, delay: int = 0) -> None:
        assert self.blocked[keys["model"]] <= now, "admitted while the model is cooling down"
        assert 0 <= delay <= self.margin
        for c in plan.counters:
            key, limit = keys[c.key], c.limit
            assert self.blocked[key] <= now, f"admitted while {c.key} is blocked"
            cost = 1 if limit.unit == "requests" else tokens
            if limit.kind == "fixed":
                k = self._fixed_key(key, limit, now)
                self.fixed_used[k] += cost
                if (k[1] + 1) * limit.window_ms - now < self.margin:
                    self.fixed_spill[k] += cost
                assert self.fixed_used[k] <= limit.capacity, (
                    f"{c.key}: {self.fixed_used[k]} admitted in window {k[1]} (with the margin's spill), "
                    f"limit {limit.capacity}"
                )
            else:
                self.caps[key] = limit
                self.arrive(key, now)
                self.pending[key].append((now + delay, cost))
                self.arrive(key, now)  # a delay of 0 arrives at once

    def adjust(self, keys: dict, ops: list, now: int) -> None:
        for counter, op, value, window in ops:
            key, limit = keys[counter.key], counter.limit
            if limit.kind == "fixed":
                k = self._fixed_key(key, limit, now)
                if op == "+" and window == k[1]:
                    self.fixed_used[k] = max(0.0, self.fixed_used[k] + value)
                elif op == ">":
                    self.fixed_used[k] = max(self.fixed_used[k], value)
            else:
                # A settle, refund or calibration comes after what it corrects reached the provider: whatever is
                # still on its way arrives now (a delay within [0, margin], as every pending arrival is younger).
                self.caps[key] = limit
                self.arrive(key, now)
                self.pending[key] = [(now, cost) for _, cost in self.pending[key]]
                self.arrive(key, now)
                level = self._drained(key, limit, now)
                level = max(0.0, level + value) if op == "+" else max(level, value)
                self.level[key] = (level, now)


def _keys(store, plan: DeploymentPlan) -> dict:
    out = {c.key: store.keys.counter(plan, c) for c in plan.counters}
    out["model"] = store.keys.model(plan)
    return out


def _same(a, b) -> None:
    """The Lua store and the twin gave the same answer."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, Reservation):
        assert (a.now_ms, a.tokens) == (b.now_ms, b.tokens)
        assert [(s.counter.key, s.remaining, s.reset_ms) for s in a.states] == \
               [(s.counter.key, s.remaining, s.reset_ms) for s in b.states]
    elif isinstance(a, Blocked):
        assert (a.now_ms, a.until_ms, a.why, a.counter and a.counter.key) == \
               (b.now_ms, b.until_ms, b.why, b.counter and b.counter.key)
    else:
        assert a == b


op_strategy = st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 2), st.integers(1, 120)),
    st.tuples(st.just("peek"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("settle"), st.integers(0, 10_000), st.integers(0, 150)),
    st.tuples(st.just("refund"), st.integers(0, 10_000), st.booleans()),
    st.tuples(st.just("calibrate"), st.integers(0, 2), st.integers(0, 3), st.integers(0, 300)),
    st.tuples(st.just("block"), st.integers(0, 2), st.integers(0, 3), st.integers(-500, 4_000)),
    st.tuples(st.just("cool"), st.integers(0, 2), st.integers(0, 1_500), st.integers(0, 4_000), st.booleans(),
              st.sampled_from([0, 0, 700, 2_500])),
    st.tuples(st.just("wait"), st.sampled_from([0, 1, 7, 120, 333, 999, 1_000, 1_001, 2_500, 6_100])),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Found while writing this test: a calibration in the window after end-of-window reservations dropped their
# spill (adjust.lua reset a fixed window without carrying it), so 5 got in where 3 may land.
@example(margin_ms=250, start_offset=0, ops=[("wait", 880), ("reserve", 0, 1), ("reserve", 0, 1), ("reserve", 1, 1),
                                            ("wait", 200), ("calibrate", 0, 0, 2), ("reserve", 0, 1),
                                            ("reserve", 1, 1)], delays=[0])
# Issue 11 item 4: a burst that reaches Groq as late as the margin allows, then two requests that arrive at once.
# The store used to keep the plain drained level, so the margin's credit was spent by the first admission after the
# burst and the second one overfilled the provider's bucket (4 + 0.7 > 4).
@example(margin_ms=250, start_offset=0, ops=[("reserve", 2, 1)] * 4 + [("wait", 333), ("wait", 120), ("wait", 120)]
         + [("reserve", 2, 1)] * 2, delays=[1000] * 4 + [0, 0])
@given(margin_ms=st.sampled_from([0, 250, 600]), start_offset=st.integers(0, 999),
       ops=st.lists(op_strategy, min_size=1, max_size=60),
       delays=st.lists(st.integers(0, 1000), min_size=1, max_size=60))
def test_lua_and_twin_agree_and_never_admit_more_than_the_limit(margin_ms, start_offset, ops, delays):
    """``delays``: the n-th grant reaches the provider ``margin x delays[n] / 1000`` ms after its reservation."""
    now = [START_MS + start_offset * 7]
    lua = SyncQuotaStore(StoreTarget(url="redis://fakeredis"), client=fakeredis.FakeRedis(),
                         arrival_margin_s=margin_ms / 1000)
    twin = LocalQuotaStore(arrival_margin_s=margin_ms / 1000, clock_ms=lambda: now[0])
    model = Model(margin_ms)
    granted: list[Reservation] = []
    with mock.patch("time.time", lambda: now[0] / 1000):
        for op in ops:
            kind = op[0]
            if kind == "wait":
                now[0] += op[1]
                continue
            if kind in ("reserve", "peek"):
                plan = PLANS[op[1]]
                if kind == "reserve":
                    a, b = lua.reserve(plan, op[2]), twin.reserve(plan, op[2])
                else:
                    a, b = lua.peek(plan, counters_only=op[2]), twin.peek(plan, counters_only=op[2])
                _same(a, b)
                assert a.now_ms == now[0]  # time is Redis TIME (here fakeredis's, driven by the test clock)
                if kind == "reserve" and isinstance(a, Reservation):
                    delay = margin_ms * delays[len(granted) % len(delays)] // 1000
                    model.grant(_keys(lua, plan), plan, op[2], a.now_ms, delay)
                    granted.append(a)
            elif kind in ("settle", "refund"):
                if not granted:
                    continue
                r = granted[op[1] % len(granted)]
                if kind == "settle":
                    from router_plugin.store._codec import settle_ops
                    ops_ = settle_ops(r, op[2])
                    lua.settle(r, op[2]), twin.settle(r, op[2])
                else:
                    from router_plugin.store._codec import refund_ops
                    ops_ = refund_ops(r, op[2])
                    lua.refund(r, op[2]), twin.refund(r, op[2])
                model.adjust(_keys(lua, r.plan), ops_, now[0])
            elif kind == "calibrate":
                plan = PLANS[op[1]]
                counter = plan.counters[op[2] % len(plan.counters)]
                facts = [Remaining(counter.limit.name, remaining=op[3] % (counter.limit.capacity + 1),
                                   capacity=counter.limit.capacity)]
                from router_plugin.store._codec import calibrate_ops
                lua.calibrate(plan, facts), twin.calibrate(plan, facts)
                model.adjust(_keys(lua, plan), calibrate_ops(plan, facts), now[0])
            elif kind == "block":
                plan = PLANS[op[1]]
                counter = plan.counters[op[2] % len(plan.counters)]
                a = lua.block(plan, counter, now[0] + op[3], "test block")
                b = twin.block(plan, counter, now[0] + op[3], "test block")
                assert a == b
                key = lua.keys.counter(plan, counter)
                model.blocked[key] = max(model.blocked[key], a)
            elif kind == "cool":
                plan = PLANS[op[1]]
                until = now[0] + op[5] if op[5] else 0
                a = lua._mark(lua.keys.model(plan), _mark_args(op, until))
                b = twin.mark(twin.keys.model(plan), _mark_args(op, until))
                assert a == b
                key = lua.keys.model(plan)
                model.blocked[key] = max(model.blocked[key], a[0])
        model.arrive_all()  # what is still on its way reaches the provider too
        # Same data left behind, key by key (and every key expires).
        for key in lua.client.keys("*"):
            name = key.decode()
            assert lua.client.pttl(name) >= 0  # every key has an expiry (0: expires this very ms)
            if name in twin.db.data:
                assert lua.client.pttl(name) == twin.db.pttl(name, now[0])


def _mark_args(op, until):
    from router_plugin.store._codec import mark_args

    return mark_args(until, op[2], op[4], op[3], "busy")


def test_the_model_catches_over_admission():
    """The checker must be able to fail: feed it a store that forgets the spill of the previous window."""
    model = Model(margin_ms=250)
    keys = {"minute": "m", "day": "d", "model": "x"}
    window_end = (START_MS // 1000 + 1) * 1000
    for i in range(3):  # 3 in the last 250 ms of a window: they may land in the next one
        model.grant(keys, OR_SHORT, 1, window_end - 100 + i)
    with pytest.raises(AssertionError, match="admitted in window"):
        model.grant(keys, OR_SHORT, 1, window_end + 10)  # a 4th in the next window: 4 > 3 at the provider


# ---- delayed arrivals against the simulator's Groq buckets -----------------------------------------------------


def _margin_store(store_kind: str, now: list[int]):
    """The Lua scripts (in fakeredis, on the test's clock through time.time) or their twin, 2 s arrival margin."""
    if store_kind == "lua":
        return SyncQuotaStore(StoreTarget(url="redis://fakeredis"), client=fakeredis.FakeRedis(), arrival_margin_s=2.0)
    return LocalQuotaStore(arrival_margin_s=2.0, clock_ms=lambda: now[0])


def _delayed_arrivals_429s(store_kind: str, delays: str, seconds: float = 24.0) -> tuple[int, list[int]]:
    """Issue 11 item 4, in virtual time: the real Groq plan (gpt-oss-20b: 30 rpm) with the default 2 s margin;
    a burst of 30, then a client asks every 50 ms; every admitted request reaches the simulator's Groq buckets
    (``sim.limits``, Groq's refilling limits) 0.1-1.5 s after its reservation: ``delays`` "random" (uniform), or
    "late-burst" (the burst 1.5 s late, everything after it 0.1 s). Returns (simulator 429s, admission times, ms)."""
    from router_plugin.sim.catalog import GROQ_MODELS
    from router_plugin.sim.limits import GroqLimits

    now = [START_MS]
    plan = plan_for({"model_name": "c", "litellm_params": {"model": "groq/openai/gpt-oss-20b",
                                                           "api_key": "delay-key"}}, PlanInputs())
    store = _margin_store(store_kind, now)
    groq = GroqLimits(GROQ_MODELS["openai/gpt-oss-20b"].caps)
    rng = random.Random(11)
    arrivals: list[int] = []
    admitted: list[int] = []
    refused = 0
    with mock.patch("time.time", lambda: now[0] / 1000):
        while now[0] < START_MS + seconds * 1000:
            for _ in range(30 if now[0] == START_MS else 1):  # the burst, then one ask per tick
                outcome = store.reserve(plan, 100)
                if isinstance(outcome, Reservation):
                    admitted.append(now[0] - START_MS)
                    if delays == "random":
                        delay = rng.randint(100, 1500)
                    else:
                        delay = 1500 if now[0] == START_MS else 100
                    arrivals.append(now[0] + delay)
            arrivals.sort()
            while arrivals and arrivals[0] <= now[0] + 50:
                at = arrivals.pop(0)
                if groq.try_admit(100, at / 1000) is not None:
                    refused += 1
            now[0] += 50
    return refused, admitted


@pytest.mark.parametrize("store_kind", ["lua", "twin"])
@pytest.mark.parametrize("delays", ["random", "late-burst"])
def test_arrivals_within_the_margin_give_no_simulator_429s(store_kind, delays):
    refused, admitted = _delayed_arrivals_429s(store_kind, delays)
    assert refused == 0, f"{refused} simulator 429s from arrivals 0.1-1.5 s late (margin 2 s)"
    # The burst room is the whole 30; the next request waits out the margin once (4 s: 2 s of refill + 2 s margin);
    # then the rate is the plain bucket's: one every 2 s.
    assert admitted[:30] == [0] * 30
    assert admitted[30] == 4000
    steady = [t for t in admitted if 10_000 <= t < 20_000]
    assert len(steady) == 5, admitted


# Admission times (ms after the first) of a fast burst from two service workers: same-millisecond and
# few-millisecond gaps. The margin's credit cancels the drain exactly in arithmetic, but in doubles the 30th
# admission read 29.000000000000007 + 1 > 30 and was refused: 29 served out of 30 (test_example_service).
FAST_BURST_MS = [0, 1, 14, 16, 19, 27, 30, 38, 78, 86, 91, 131, 139, 141, 146, 146, 149, 150, 155, 195, 195, 197,
                 200, 203, 203, 203, 216, 229, 229, 234, 234, 242, 243, 243, 246]


@pytest.mark.parametrize("store_kind", ["lua", "twin"])
def test_a_fast_burst_gets_the_whole_refill_bucket(store_kind):
    now = [START_MS]
    plan = plan_for({"model_name": "c", "litellm_params": {"model": "groq/openai/gpt-oss-20b",
                                                           "api_key": "burst-key"}}, PlanInputs())
    store = _margin_store(store_kind, now)
    admitted = []
    with mock.patch("time.time", lambda: now[0] / 1000):
        for offset in FAST_BURST_MS:
            now[0] = START_MS + offset
            outcome = store.reserve(plan, 50)
            if isinstance(outcome, Reservation):
                admitted.append(offset)
                assert min(s.remaining for s in outcome.states) >= 0
    assert len(admitted) == 30, admitted  # gpt-oss-20b: 30 requests/min, all of them in a burst from idle


def test_the_model_catches_a_late_burst_overfilling_the_providers_bucket():
    """The delayed-arrival checker must be able to fail: a burst that reaches Groq 250 ms late, then two requests
    that arrive at once, overfill its 4-per-second bucket (what the store admitted before issue 11 item 4)."""
    model = Model(margin_ms=250)
    keys = {c.key: c.key for c in GQ_SHORT.counters} | {"model": "x"}
    for _ in range(4):
        model.grant(keys, GQ_SHORT, 1, START_MS, delay=250)
    model.grant(keys, GQ_SHORT, 1, START_MS + 573, delay=0)
    with pytest.raises(AssertionError, match="the provider's bucket"):
        model.grant(keys, GQ_SHORT, 1, START_MS + 573, delay=0)


# ---- stress: 8 processes against one real redis-server --------------------------------------------------------

STRESS_PROCESSES = 8
STRESS_TASKS = 32
STRESS_SECONDS = 7.0
STRESS_MARGIN_S = 0.2


def stress_plans() -> list[DeploymentPlan]:
    """Limits small enough to hit many times in a few seconds: one plan per kind of limit (so each is the one that
    binds), two with all of a provider's counters at once (all-or-nothing), and the real plans from plan_for."""
    return [
        short_plan("openrouter/minute:free", "or:s1", (fixed("minute", 8, 1.5),)),
        short_plan("openrouter/day:free", "or:s2", (fixed("minute", 12, 1.5), fixed("day", 20, 6))),
        short_plan("groq/rpm", "gq:s:rpm", (refill("rpm", 10, 1.5, "requests"),)),
        short_plan("groq/rpd", "gq:s:rpd", (refill("rpm", 40, 1.5, "requests"), refill("rpd", 20, 6, "requests"))),
        short_plan("groq/tpm", "gq:s:tpm", (refill("rpm", 60, 1.5, "requests"), refill("tpm", 900, 1.5, "tokens"))),
        short_plan("openrouter/both:free", "or:s3", (fixed("minute", 12, 1.5), fixed("day", 30, 6))),
        short_plan("groq/all", "gq:s:all", (
            refill("rpm", 10, 1.5, "requests"), refill("rpd", 30, 6, "requests"), refill("tpm", 900, 1.5, "tokens"),
        )),
        # The real plans as plan_for derives them (60 s clock minute, UTC day; Groq's published limits).
        plan_for({"model_name": "c", "litellm_params": {"model": "openrouter/deepseek/deepseek-r1:free",
                                                       "api_key": "stress-key"}}, PlanInputs()),
        plan_for({"model_name": "c", "litellm_params": {"model": "groq/openai/gpt-oss-20b",
                                                       "api_key": "stress-key"}}, PlanInputs()),
    ]


def _stress_worker(url: str, seed: int, start_at: float, queue) -> None:  # runs in a child process
    try:
        queue.put(asyncio.run(_stress(url, seed, start_at)))
    except BaseException as exc:  # report, never hang the parent
        queue.put(f"worker {seed}: {type(exc).__name__}: {exc}")


async def _stress(url: str, seed: int, start_at: float) -> tuple[list, dict]:
    store = QuotaStore(StoreTarget(url=url, timeout_s=5.0), prefix="stress:", arrival_margin_s=STRESS_MARGIN_S)
    plans = stress_plans()
    rng = random.Random(seed)
    grants: list = []
    refusals: dict = defaultdict(int)  # (plan index, counter key) -> refusals by that counter
    await asyncio.sleep(max(0.0, start_at - time.time()))
    stop = time.monotonic() + STRESS_SECONDS

    async def task():
        while time.monotonic() < stop:
            index = rng.randrange(len(plans))
            tokens = rng.randint(20, 220)
            outcome = await store.reserve(plans[index], tokens)
            if isinstance(outcome, Reservation):
                actual = tokens if rng.random() < 0.5 else rng.randint(1, tokens)  # settle at or below the estimate
                if actual != tokens:
                    await store.settle(outcome, actual)
                grants.append((index, outcome.now_ms, tokens, actual))
            else:
                refusals[(index, outcome.counter.key if outcome.counter else "")] += 1
                await asyncio.sleep(rng.uniform(0, 0.01))

    await asyncio.gather(*(task() for _ in range(STRESS_TASKS)))
    await store.aclose()
    return grants, dict(refusals)


def _check_fixed(grants: list, limit: Limit, margin_ms: int) -> int:
    """Units in any window, plus those reserved within the margin before it, never exceed the limit."""
    per_window: dict[int, int] = defaultdict(int)
    spill: dict[int, int] = defaultdict(int)
    for now_ms, _tokens, _actual in grants:
        w = now_ms // limit.window_ms
        per_window[w] += 1
        if (w + 1) * limit.window_ms - now_ms < margin_ms:
            spill[w] += 1
    worst = 0
    for w, n in per_window.items():
        worst = max(worst, n + spill.get(w - 1, 0))
        assert n + spill.get(w - 1, 0) <= limit.capacity, f"{limit.name}: {n} in window {w} (+ spill) > {limit.capacity}"
    return worst


def _check_bucket(grants: list, limit: Limit, _margin_ms: int = 0) -> float:
    """A plain token bucket fed the grants (requests: 1; tokens: the settled amount) never overflows: for every
    run of grants i..j, their sum <= capacity + refill between t_i and t_j."""
    events = sorted((now_ms, 1 if limit.unit == "requests" else actual) for now_ms, _tokens, actual in grants)
    rate = limit.capacity / limit.window_ms
    worst = 0.0
    for i in range(len(events)):
        total = 0.0
        for j in range(i, len(events)):
            total += events[j][1]
            allowed = limit.capacity + rate * (events[j][0] - events[i][0])
            worst = max(worst, total - allowed)
            if total - allowed > limit.capacity:  # far past any bound: stop scanning this start
                break
    assert worst <= 1e-6, f"{limit.name}: a run of grants exceeds the bucket by {worst:.2f} units"
    return worst


@pytest.mark.integration
def test_stress_eight_processes_never_over_admit(redis_url):
    plans = stress_plans()
    # Start early in a clock minute so that the real 60 s minute limit is one window for the whole run.
    if 60 - time.time() % 60 < STRESS_SECONDS + 12:
        time.sleep(60 - time.time() % 60 + 0.3)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 4.0  # every process has imported and connected by then
    procs = [ctx.Process(target=_stress_worker, args=(redis_url, seed, start_at, queue), daemon=True)
             for seed in range(STRESS_PROCESSES)]
    grants_all: list = []
    refusals: dict = defaultdict(int)
    try:
        for p in procs:
            p.start()
        for _ in procs:
            got = queue.get(timeout=90)
            assert not isinstance(got, str), got
            grants_all.extend(got[0])
            for k, v in got[1].items():
                refusals[k] += v
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    by_plan: dict[int, list] = defaultdict(list)
    for index, now_ms, tokens, actual in grants_all:
        by_plan[index].append((now_ms, tokens, actual))
    margin_ms = int(STRESS_MARGIN_S * 1000)
    worst = {}
    for index, plan in enumerate(plans):
        grants = by_plan[index]
        assert grants, f"nothing admitted on {plan.model}"
        for counter in plan.counters:
            check = _check_fixed if counter.limit.kind == "fixed" else _check_bucket
            worst[(plan.model, counter.key)] = check(grants, counter.limit, margin_ms)
    # Each kind of limit was actually reached (else the test proves nothing): its own plan was refused by it,
    # and a fixed window was filled exactly to its capacity.
    for index, key in ((0, "minute"), (1, "day"), (2, "rpm"), (3, "rpd"), (4, "tpm")):
        assert refusals[(index, key)] > 0, f"{plans[index].model}: {key} never refused anything"
    assert worst[("openrouter/minute:free", "minute")] == 8
    assert worst[("openrouter/day:free", "day")] == 20
    real_or, real_gq = len(by_plan[7]), len(by_plan[8])
    span_s = (max(g[1] for g in grants_all) - min(g[1] for g in grants_all)) / 1000
    assert real_or == 20  # one clock minute, 8 processes x 32 coroutines asking: exactly the account's 20
    assert 30 <= real_gq <= 30 + math.ceil(span_s / 2) + 1  # 30 at once, then one every 2 s of refill
    print(f"\n{len(grants_all)} grants, {sum(refusals.values())} refusals over {span_s:.1f} s; "
          f"worst window count (fixed) / bucket excess (refill, <= 0): {worst}")
