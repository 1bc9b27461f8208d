"""``reserve_first``: one reserve.lua call walks a chain's candidates in order and reserves the first that fits
(all its counters, all or none); none fits: every candidate's reason with its reset. ``Ask`` ceilings and extra
counters. The Lua script (fakeredis, the test's clock) and its in-process twin must agree (issue 18 item 1)."""

from __future__ import annotations

import random
from unittest import mock

import fakeredis
import pytest

from router_plugin.adapter.router_api import all_deployments
from router_plugin.limits import Counter, DeploymentPlan, Limit
from router_plugin.store import Ask, Blocked, Reservation, StoreTarget, SyncQuotaStore
from router_plugin.store.local import LocalQuotaStore

START_MS = 1_795_780_810_000


def fixed(key: str, cap: int, window_s: float = 60) -> Counter:
    return Counter(key, Limit(key, cap, window_s, "fixed", "requests"), f"{key} limit")


def refill(key: str, cap: int, window_s: float = 60, unit: str = "requests") -> Counter:
    return Counter(key, Limit(key, cap, window_s, "refill", unit), f"{key} limit")


def plan(name: str, slot: str, *counters: Counter) -> DeploymentPlan:
    return DeploymentPlan(name, "chat", name, "groq" if slot else None, slot, name, tuple(counters))


A = plan("a", "s:a", fixed("minute", 2))
B = plan("b", "s:b", refill("rpm", 2), refill("tpm", 100, unit="tokens"))
C = plan("c", "s:c", fixed("minute", 1))
FREE = plan("paid", "")


class Counting(fakeredis.FakeRedis):
    """fakeredis that counts the script calls it runs."""

    calls = 0

    def evalsha(self, *args, **kwargs):
        type(self).calls += 1
        return super().evalsha(*args, **kwargs)


@pytest.fixture(params=["lua", "twin"])
def store(request):
    now = [START_MS]
    if request.param == "lua":
        Counting.calls = 0
        s = SyncQuotaStore(StoreTarget(url="redis://fakeredis"), client=Counting(), arrival_margin_s=0.5)
    else:
        s = LocalQuotaStore(arrival_margin_s=0.5, clock_ms=lambda: now[0])
    with mock.patch("time.time", lambda: now[0] / 1000):
        s.now = now
        yield s


def fill(store, p: DeploymentPlan) -> None:
    while isinstance(store.reserve(p, 10), Reservation):
        pass


def test_the_first_candidate_that_fits_is_reserved_and_only_it(store):
    fill(store, A)
    got = store.reserve_first([Ask(A, 10), Ask(B, 10), Ask(C, 10)])
    assert isinstance(got, Reservation) and got.plan is B
    assert isinstance(store.peek(C), Reservation) and store.peek(C).states[0].remaining == 1  # C untouched
    assert store.peek(B).states[0].remaining == 1  # rpm 2: B holds this one


def test_none_fits_answers_every_candidate_in_order_with_its_reset(store):
    for p in (A, C):
        fill(store, p)
    store.cool(B, "failing: test", 30, 30)
    got = store.reserve_first([Ask(A, 10), Ask(B, 10), Ask(C, 10)])
    assert isinstance(got, list) and [b.plan for b in got] == [A, B, C]
    assert got[0].counter.key == "minute" and got[0].why == "full" and got[0].until_ms > got[0].now_ms
    assert got[1].counter is None and "failing" in got[1].why
    assert got[2].counter.key == "minute"


def test_a_candidate_is_all_or_none(store):
    tight = plan("t", "s:t", fixed("minute", 5), refill("tpm", 50, unit="tokens"))
    got = store.reserve_first([Ask(tight, 60), Ask(C, 10)])  # tokens do not fit: nothing of t is written
    assert isinstance(got, Reservation) and got.plan is C
    assert store.peek(tight).states[0].remaining == 5


def test_unmetered_candidates_only_check_the_cooldown(store):
    fill(store, A)
    got = store.reserve_first([Ask(A, 10), Ask(FREE, 10)])
    assert isinstance(got, Reservation) and got.plan is FREE and got.states == ()
    store.cool(FREE, "failing: x", 10, 10)
    got = store.reserve_first([Ask(A, 10), Ask(FREE, 10)])
    assert isinstance(got, list) and got[1].counter is None


def test_peek_candidates_are_reported_only_when_blocked(store):
    fill(store, A)
    store.block(C, C.counters[0], store.now[0] + 5_000, "exhausted (provider 429)")
    got = store.reserve_first([Ask(A, 10), Ask(B, 10, peek=True), Ask(C, 10, peek=True)])
    assert isinstance(got, list) and [b.plan for b in got] == [A, C]  # B fits but is never chosen
    assert store.peek(B).states[0].remaining == 2  # nothing written for B


def test_a_ceiling_below_capacity_refuses_early_and_says_so(store):
    day = fixed("day", 5, 600)
    p = plan("d", "s:d", day)
    low = Ask(p, 10, ceilings={"day": 3})
    for _ in range(3):
        assert isinstance(store.reserve_first([low]), Reservation)
    got = store.reserve_first([low])
    assert isinstance(got, list) and got[0].ceiling == 3 and got[0].why == "full"
    assert isinstance(store.reserve_first([Ask(p, 10)]), Reservation)  # no ceiling: up to the capacity
    assert isinstance(store.reserve_first([Ask(p, 10)]), Reservation)
    full = store.reserve_first([Ask(p, 10)])
    assert full[0].ceiling is None  # refused at the capacity


def test_a_refill_ceiling_reports_the_wait_under_the_ceiling(store):
    p = plan("r", "s:r", refill("rpm", 4, 60))
    for _ in range(2):
        assert isinstance(store.reserve_first([Ask(p, 1)]), Reservation)
    got = store.reserve_first([Ask(p, 1, ceilings={"rpm": 2})])
    assert isinstance(got, list) and got[0].ceiling == 2
    # level 2 + 1 must drain to 2: 1 unit at 4/min = 15 s, plus the arrival margin
    assert got[0].until_ms - got[0].now_ms == 500 + 15_000
    assert isinstance(store.reserve_first([Ask(p, 1)]), Reservation)  # the drain rate is the capacity's


def test_extra_counters_must_fit_too_and_are_refunded(store):
    share = fixed("share:k1", 1, 600)
    got = store.reserve_first([Ask(A, 10, extra=(share,))])
    assert isinstance(got, Reservation) and got.extra == (share,) and len(got.states) == 2
    again = store.reserve_first([Ask(A, 10, extra=(share,)), Ask(C, 10)])
    assert isinstance(again, Reservation) and again.plan is C
    assert store.peek(A).states[0].remaining == 1  # A was not charged for the refused attempt
    store.refund(got, requests=True)
    assert isinstance(store.reserve_first([Ask(A, 10, extra=(share,))]), Reservation)


def test_one_script_call_walks_past_three_full_deployments():
    Counting.calls = 0
    s = SyncQuotaStore(StoreTarget(url="redis://fakeredis"), client=Counting(), arrival_margin_s=0.5)
    for p in (A, C):
        fill(s, p)
    full_b = plan("b2", "s:b2", fixed("minute", 1))
    fill(s, full_b)
    Counting.calls = 0
    got = s.reserve_first([Ask(A, 10), Ask(C, 10), Ask(full_b, 10), Ask(B, 10)])
    assert isinstance(got, Reservation) and got.plan is B
    assert Counting.calls == 1


def test_on_a_cluster_consecutive_candidates_of_one_slot_share_a_call():
    Counting.calls = 0
    s = SyncQuotaStore(StoreTarget(url="redis://fakeredis", cluster=True), client=Counting(), arrival_margin_s=0.5)
    a2 = plan("a2", "s:a", A.counters[0])  # same account pool as A
    fill(s, A)
    Counting.calls = 0
    got = s.reserve_first([Ask(A, 10), Ask(a2, 10), Ask(C, 10)])
    assert isinstance(got, Reservation) and got.plan is C
    assert Counting.calls == 2  # {A, a2} in one call (one slot), C in another


def _pair(seed: int):
    now = [START_MS]
    lua = SyncQuotaStore(StoreTarget(url="redis://fakeredis"), client=fakeredis.FakeRedis(), arrival_margin_s=0.25)
    twin = LocalQuotaStore(arrival_margin_s=0.25, clock_ms=lambda: now[0])
    return now, lua, twin


@pytest.mark.parametrize("seed", range(6))
def test_lua_and_twin_agree_on_random_chains(seed):
    rng = random.Random(seed)
    now, lua, twin = _pair(seed)
    share = fixed("share:x", 6, 3)
    plans = [A, B, C, FREE, plan("e", "s:e", refill("rpm", 3, 2), fixed("day", 8, 6))]
    with mock.patch("time.time", lambda: now[0] / 1000):
        for _ in range(200):
            now[0] += rng.choice([0, 0, 7, 120, 333, 999, 1_500])
            if rng.random() < 0.05:
                p = rng.choice(plans[:3])
                for s in (lua, twin):
                    s.cool(p, "failing: r", 0.5, 0.5)
                continue
            asks = []
            for p in rng.sample(plans, rng.randint(1, len(plans))):
                ceil = {c.key: rng.randint(0, c.limit.capacity) for c in p.counters if rng.random() < 0.3}
                asks.append(Ask(p, rng.randint(1, 60), ceil, (share,) if rng.random() < 0.3 and p.slot else (),
                                rng.random() < 0.2))
            a, b = lua.reserve_first(asks), twin.reserve_first(asks)
            assert type(a) is type(b)
            if isinstance(a, Reservation):
                assert (a.plan, a.now_ms, [(s.remaining, s.reset_ms) for s in a.states]) == \
                       (b.plan, b.now_ms, [(s.remaining, s.reset_ms) for s in b.states])
            else:
                assert [(x.plan, x.counter, x.until_ms, x.why, x.ceiling) for x in a] == \
                       [(x.plan, x.counter, x.until_ms, x.why, x.ceiling) for x in b]


def test_fail_open_walks_the_chain_on_this_workers_share_with_ceilings_and_extras():
    import asyncio

    from router_plugin.store import resolve_target
    from router_plugin.store.resilient import open_resilient

    store, sync = open_resilient(resolve_target("redis://127.0.0.1:1/0", None, 0.3), expected_workers=4)
    day = plan("d", "s:d", fixed("day", 40, 600))  # share: 10
    share = fixed("share:k", 8, 600)  # share: 2
    low = Ask(day, 10, ceilings={"day": 20}, extra=(share,))  # ceiling 20 of 40 -> 5 of the share's 10
    got = [sync.reserve_first([low]) for _ in range(3)]
    assert [isinstance(g, Reservation) for g in got] == [True, True, False]
    assert got[2][0].counter.key == "share:k"  # the extra counter's share (2) ran out first
    plain = Ask(day, 10, ceilings={"day": 20})
    for _ in range(3):  # 2 + 3 = 5: the ceiling's share
        assert isinstance(sync.reserve_first([plain]), Reservation)
    refused = asyncio.run(store.reserve_first([plain, Ask(C, 1, peek=True)]))  # the async store: same limiter
    assert isinstance(refused, list) and len(refused) == 1 and refused[0].ceiling == 5
    assert isinstance(sync.reserve_first([Ask(day, 10), Ask(C, 1)]), Reservation)  # no ceiling: the share


# ---- the walk: one store call per routing decision (real Router, real redis-server) ------------------------------


def _script_calls(client) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval"))


@pytest.mark.integration
@pytest.mark.parametrize("path", ["async", "sync"])
def test_a_walk_past_three_full_deployments_costs_one_store_call(sim, redis_url, path):
    import asyncio
    import time

    import redis

    import router_plugin
    from router_plugin.adapter.installer import installed
    from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config

    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, calibration={"interval_s": 0}))
    inst = installed(router)
    plans = [inst.plans.plan(d) for d in all_deployments(router)]
    assert [p.model for p in plans] == list(DEMO_CHAIN)
    until = int(time.time() * 1000) + 60_000
    for p in plans[:3]:  # the OpenRouter pool (both :free models) and the first Groq model: full
        inst.sync_store.block(p, p.counters[0], until, "exhausted (test)")
    inst.sync_store.peek(plans[3])  # the script is loaded in the server (else: EVALSHA, NOSCRIPT, load, EVALSHA)
    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    msg = [{"role": "user", "content": "hello"}]
    if path == "async":
        # the walk itself (the Router's own async pick is deprecated on 1.110: Router.select)
        chosen = asyncio.run(inst.strategy.async_get_available_deployment(DEMO_GROUP, messages=msg,
                                                                          request_kwargs={"metadata": {}}))
    else:
        chosen = router.get_available_deployment(model=DEMO_GROUP, messages=msg, request_kwargs={"metadata": {}})
    assert chosen["litellm_params"]["model"] == DEMO_CHAIN[3]
    assert _script_calls(client) == 1, client.info("commandstats")  # past three full deployments: one EVALSHA
    client.config_resetstat()
    inst.sync_store.block(plans[3], plans[3].counters[0], until, "exhausted (test)")
    client.config_resetstat()
    with pytest.raises(Exception) as refused:
        router.get_available_deployment(model=DEMO_GROUP, messages=msg, request_kwargs={"metadata": {}})
    assert "exhausted (test) until" in str(refused.value) and _script_calls(client) == 1  # refusal: one call too


@pytest.mark.integration
def test_the_walk_reserves_what_the_admission_asks(sim, redis_url):
    """``self.admission.ask`` builds every candidate's Ask: here an extra counter of 1 that the walk must fit."""
    import asyncio

    import router_plugin
    from router_plugin.adapter.installer import installed
    from router_plugin.adapter.strategy import QuotaRouting
    from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config

    share = fixed("share:test", 1, 600)

    class OneShare:
        def ask(self, plan, tokens, metadata=None, now_s=None):
            return Ask(plan, tokens, extra=(share,) if plan.metered else ())

    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, chain=(DEMO_CHAIN[2],),
                                                    calibration={"interval_s": 0}))
    inst = installed(router)
    strategy = next(v for v in vars(inst).values() if isinstance(v, QuotaRouting))
    strategy.admission = OneShare()
    msg = [{"role": "user", "content": "hi"}]

    async def twice():
        await router.acompletion(model=DEMO_GROUP, messages=msg, max_tokens=8)
        with pytest.raises(router_plugin.QuotaExhaustedError) as refused:  # the extra counter (1) is spent
            await router.acompletion(model=DEMO_GROUP, messages=msg, max_tokens=8)
        return refused.value

    assert "share:test limit" in str(asyncio.run(twice()))
