"""The reservation lane (store/lane.py) and the prefetch at the call's entry (adapter/strategy.py ``prefetch``):
issue 18's one round trip per routing decision, taken off the caller's path as far as LiteLLM allows. A real
redis-server throughout; the prefetch tests use a real Router and the simulator."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import redis

from router_plugin.errors import StoreError
from router_plugin.limits import Counter, DeploymentPlan, Limit
from router_plugin.store import Ask, Blocked, QuotaStore, Reservation, StoreTarget, resolve_target
from router_plugin.store.lane import Lane, LaneAddress, pack
from tests.support import needs_108

pytestmark = pytest.mark.integration


def _plan(name: str = "m", cap: int = 5) -> DeploymentPlan:
    minute = Counter("minute", Limit("minute", cap, 60, "fixed", "requests"), "minute limit")
    tpm = Counter("tpm", Limit("tpm", 10_000, 60, "refill", "tokens"), "tokens limit")
    return DeploymentPlan(name, "chat", f"groq/{name}", "groq", f"gq:t:{name}", f"groq/{name}", (minute, tpm))


def _store(url: str, **kwargs) -> QuotaStore:
    return QuotaStore(resolve_target(url, None, 2.0), "lane-test:", **kwargs)


def _lane_of(store: QuotaStore) -> Lane:
    return store._scripts["lane"]


# ---- where a lane is used ------------------------------------------------------------------------------------------


def test_the_lane_serves_plain_tcp_and_unix_sockets_and_leaves_tls_cluster_and_options_to_redis_py(tmp_path):
    plain = LaneAddress.of(StoreTarget(url="redis://u:secret@10.0.0.5:6380/3", timeout_s=1.5))
    assert (plain.host, plain.port, plain.db, plain.username, plain.password, plain.timeout_s) == \
        ("10.0.0.5", 6380, 3, "u", "secret", 1.5)
    unix = LaneAddress.of(StoreTarget(url="unix:///run/redis.sock?db=2"))
    assert (unix.path, unix.db) == ("/run/redis.sock", 2)
    assert LaneAddress.of(StoreTarget(url="rediss://h:6380/0")) is None  # TLS: redis-py
    assert LaneAddress.of(StoreTarget(url="redis://h:6379/0", cluster=True)) is None
    assert LaneAddress.of(StoreTarget(url="redis://h:6379/0?socket_keepalive=true")) is None  # its options: redis-py
    assert "secret" not in repr(LaneAddress.of(StoreTarget(url="redis://:secret@h:1/0")).describe())


def test_pack_encodes_as_redis_py_does():
    from redis.connection import Encoder, PythonRespSerializer

    args = ("EVALSHA", "ab" * 20, 2, "k:{x}:1", "k:{x}:2", 1, 0.1, 30.0, -3, "f", "é")
    serializer = PythonRespSerializer(1000, Encoder("utf-8", "strict", False).encode)
    assert pack(*args) == b"".join(serializer.pack(*args))


# ---- the same answers as redis-py, one connection for many calls --------------------------------------------------


def test_the_lane_answers_what_redis_py_answers(redis_url):
    plan = _plan(cap=3)
    lane_store, py_store = _store(redis_url), _store(redis_url, client=redis.asyncio.Redis.from_url(redis_url))

    async def run(store):
        redis.Redis.from_url(redis_url).flushall()
        outcomes = []
        for tokens in (100, 200, 300, 400):
            got = await store.reserve_first([Ask(plan, tokens)])
            outcomes.append(type(got).__name__ if isinstance(got, Reservation) else [(b.counter and b.counter.key, b.why) for b in got])
            if isinstance(got, Reservation):
                store.settle_later(got, tokens // 2)
        await store.flush()
        client = redis.Redis.from_url(redis_url)
        counters = {k.decode(): client.hget(k, "used") for k in client.keys("lane-test:*")}
        await store.aclose()
        return outcomes, counters

    with_lane = asyncio.run(run(lane_store))
    assert lane_store._per_loop == {}  # closed
    with_redis_py = asyncio.run(run(py_store))
    assert with_lane[0] == ["Reservation", "Reservation", "Reservation", with_lane[0][3]]
    assert isinstance(with_lane[0][3], list) and with_lane[0][3]  # the fourth is refused: minute limit 3
    assert with_lane[0] == with_redis_py[0]
    assert {k: round(float(v)) for k, v in with_lane[1].items() if v} == \
        {k: round(float(v)) for k, v in with_redis_py[1].items() if v}


def test_two_hundred_calls_in_flight_share_one_connection_and_reserve_exactly_the_capacity(redis_url):
    plan = _plan(cap=50)
    store = _store(redis_url)

    async def burst():
        got = await asyncio.gather(*(store.reserve_first([Ask(plan, 10)]) for _ in range(200)))
        lane = _lane_of(store)
        await store.aclose()
        return got, lane

    got, lane = asyncio.run(burst())
    assert sum(isinstance(g, Reservation) for g in got) == 50
    assert all(isinstance(g, list) and isinstance(g[0], Blocked) for g in got if not isinstance(g, Reservation))
    assert lane.connects == 1


def test_callers_that_go_away_leave_every_other_reply_in_its_place(redis_url):
    """Twenty calls in flight on the one connection, each on a plan of its own capacity; five callers are cancelled
    while they wait. Every other caller gets its own plan's answer (replies are matched in order)."""
    plans = [_plan(f"m{i}", cap=10 + i) for i in range(20)]
    store = _store(redis_url)

    async def run():
        await store.reserve_first([Ask(plans[0], 1)])  # the connection is open: every call below is sent at once
        redis.Redis.from_url(redis_url).flushall()
        tasks = [asyncio.ensure_future(store.reserve_first([Ask(p, 1)])) for p in plans]
        await asyncio.sleep(0)  # all sent, none answered yet
        for i in (1, 5, 9, 13, 17):
            tasks[i].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        again = await store.reserve_first([Ask(plans[2], 1)])
        await store.aclose()
        return done, again

    done, again = asyncio.run(run())
    for i, outcome in enumerate(done):
        if i in (1, 5, 9, 13, 17):
            assert isinstance(outcome, asyncio.CancelledError)
        else:
            assert isinstance(outcome, Reservation) and outcome.plan is plans[i]
            assert outcome.remaining("minute").remaining == 10 + i - 1  # its own counter, not a neighbour's
    assert again.remaining("minute").remaining == 12 - 2


def test_a_flushed_script_cache_is_loaded_again(redis_url):
    plan = _plan()
    store = _store(redis_url)

    async def run():
        first = await store.reserve_first([Ask(plan, 1)])
        redis.Redis.from_url(redis_url).script_flush()
        second = await store.reserve_first([Ask(plan, 1)])
        await store.aclose()
        return first, second

    first, second = asyncio.run(run())
    assert isinstance(first, Reservation) and isinstance(second, Reservation)


def test_the_password_and_db_of_the_url_are_used(tmp_path):
    from tests.servers import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    server.client().config_set("requirepass", "pw-lane")  # once it answers (tests/servers.py pings without one)
    try:
        url = f"redis://:pw-lane@127.0.0.1:{server.port}/4"
        store = _store(url)
        got = asyncio.run(_once(store, _plan()))
        assert isinstance(got, Reservation)
        assert redis.Redis(port=server.port, password="pw-lane", db=4).keys("lane-test:*")
        wrong = _store(url.replace("pw-lane", "not-it"))
        with pytest.raises(StoreError) as failed:
            asyncio.run(_once(wrong, _plan()))
        assert "not-it" not in str(failed.value) and "pw-lane" not in str(failed.value)
    finally:
        server.stop()


async def _once(store: QuotaStore, plan: DeploymentPlan):
    try:
        return await store.reserve_first([Ask(plan, 1)])
    finally:
        await store.aclose()


# ---- faults: a silent server, a lost connection ---------------------------------------------------------------------


def test_a_server_that_never_answers_times_out_within_the_store_timeout_and_the_lane_reconnects(redis_url):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])  # accepts, reads nothing, answers nothing
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        store = QuotaStore(resolve_target(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", None, 0.3), "lane-test:")

        async def run():
            started = time.monotonic()
            with pytest.raises(StoreError) as failed:
                await store.reserve_first([Ask(_plan(), 1)])
            took = time.monotonic() - started
            with pytest.raises(StoreError):
                await store.reserve_first([Ask(_plan(), 1)])
            lane = _lane_of(store)
            await store.aclose()
            return failed.value, took, lane

        error, took, lane = asyncio.run(run())
        assert "Timeout" in str(error) or "timed out" in str(error).lower()
        assert took < 5  # bounded by the store's timeout (0.3 s), not hanging
        assert lane.connects == 2  # the connection that timed out was dropped; the next call opened another
    finally:
        stop.set()
        thread.join()
        for s in accepted:
            s.close()
        silent.close()


def test_calls_in_flight_on_a_connection_that_breaks_fail_and_the_next_call_connects_again(redis_url):
    plan = _plan(cap=1000)
    store = _store(redis_url)
    admin = redis.Redis.from_url(redis_url)

    async def run():
        await store.reserve_first([Ask(plan, 1)])
        admin.client_kill_filter(_type="normal", skipme=True)  # the lane's connection, from the server's side
        await asyncio.sleep(0.05)
        outcomes = await asyncio.gather(*(store.reserve_first([Ask(plan, 1)]) for _ in range(3)),
                                        return_exceptions=True)
        after = await store.reserve_first([Ask(plan, 1)])
        lane = _lane_of(store)
        await store.aclose()
        return outcomes, after, lane

    outcomes, after, lane = asyncio.run(run())
    assert all(isinstance(o, (StoreError, Reservation)) for o in outcomes)
    assert isinstance(after, Reservation)
    assert lane.connects >= 2


# ---- the prefetch: the pick's reservation started when the call enters -------------------------------------------


def _router(sim, redis_url, chain=None):
    import router_plugin
    from router_plugin.demo import DEMO_CHAIN, demo_config

    config = demo_config(sim.base_url, redis_url=redis_url, chain=chain or (DEMO_CHAIN[2],),
                         calibration={"interval_s": 0})
    return router_plugin.build_router(config)


@needs_108("the reservation lane and the prefetch", "redis-py carries the reservations; no prefetch")
def test_each_call_costs_one_reservation_and_the_pick_takes_the_prefetched_one(sim, redis_url):
    from router_plugin.adapter import strategy as strategy_module
    from router_plugin.demo import DEMO_GROUP

    router = _router(sim, redis_url)
    started, sent = [], []
    original = strategy_module.QuotaRouting.prefetch
    original_start = QuotaStore.start_reserve_first

    def spy(self, model, messages, kwargs):
        prefetch = original(self, model, messages, kwargs)
        started.append(prefetch)
        return prefetch

    def counted(self, asks):  # every reservation of the store goes through here (reserve_first too)
        sent.append(len(asks))
        return original_start(self, asks)

    async def run():
        await router.acompletion(model=DEMO_GROUP, messages=[{"role": "user", "content": "warm up"}], max_tokens=8)
        started.clear()
        sent.clear()
        for i in range(5):
            await router.acompletion(model=DEMO_GROUP, messages=[{"role": "user", "content": f"hi {i}"}],
                                     max_tokens=8)

    strategy_module.QuotaRouting.prefetch = spy
    QuotaStore.start_reserve_first = counted
    try:
        asyncio.run(run())
    finally:
        strategy_module.QuotaRouting.prefetch = original
        QuotaStore.start_reserve_first = original_start
    assert len(started) == 5 and all(p is not None and p.taken for p in started)
    assert all(isinstance(p.task.result(), Reservation) for p in started)  # every pick took its call's reservation
    assert sent == [1] * 5  # and nothing reserved a second time


def _used(client, plan, key: str = "rpm") -> float:
    from router_plugin.store import KeySpace

    counter = next(c for c in plan.counters if c.key == key)
    return round(float(client.hget(KeySpace().counter(plan, counter), "used") or 0))  # a day bucket drains slowly


@needs_108("the reservation lane and the prefetch", "redis-py carries the reservations; no prefetch")
def test_a_call_that_fails_before_its_pick_gives_the_prefetched_reservation_back(sim, redis_url):
    """LiteLLM raised between the call's entry and the pick (here: the Router's own function, replaced): what the
    prefetch reserved is refunded as never sent (request and tokens)."""
    from router_plugin.adapter.installer import installed
    from router_plugin.adapter.router_api import all_deployments
    from router_plugin.adapter.strategy import install_prefetch
    from router_plugin.demo import DEMO_GROUP

    router = _router(sim, redis_url)
    inst = installed(router)
    plan = inst.plans.plan(all_deployments(router)[0])
    client = redis.Redis.from_url(redis_url)

    class Failing:
        async def acompletion(self, **kwargs):
            await asyncio.sleep(0.01)  # the prefetched reservation has landed meanwhile
            raise ValueError("rejected before the pick")

    front = Failing()
    install_prefetch(front, lambda: inst.strategy)

    async def run():
        if inst.strategy.ready is not None:
            await inst.strategy.ready()
        before = _used(client, plan, "rpd")
        with pytest.raises(ValueError):
            await front.acompletion(model=DEMO_GROUP, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        during = _used(client, plan, "rpd")
        for _ in range(100):
            await asyncio.sleep(0.01)
            if _used(client, plan, "rpd") == before:
                break
        return before, during, _used(client, plan, "rpd"), _used(client, plan, "tpd")

    before, during, after, tokens = asyncio.run(run())
    assert during == before + 1  # the prefetch reserved
    assert after == before  # ... and gave it back
    assert tokens == 0


@needs_108("the reservation lane and the prefetch", "redis-py carries the reservations; no prefetch")
def test_a_pick_whose_asks_differ_from_the_prefetch_walks_again_and_the_prefetch_is_given_back(sim, redis_url):
    from router_plugin.adapter.installer import installed
    from router_plugin.adapter.router_api import all_deployments
    from router_plugin.adapter.strategy import _PREFETCH
    from router_plugin.demo import DEMO_GROUP

    router = _router(sim, redis_url)
    inst = installed(router)
    plan = inst.plans.plan(all_deployments(router)[0])
    client = redis.Redis.from_url(redis_url)

    async def run():
        if inst.strategy.ready is not None:
            await inst.strategy.ready()
        big = inst.strategy.prefetch(DEMO_GROUP, [{"role": "user", "content": "x" * 40_000}], {"max_tokens": 8})
        token = _PREFETCH.set(big)
        try:  # the pick sizes a smaller request than the prefetch did
            chosen = await inst.strategy.async_get_available_deployment(
                DEMO_GROUP, messages=[{"role": "user", "content": "hi"}], request_kwargs={"metadata": metadata})
        finally:
            _PREFETCH.reset(token)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if _used(client, plan, "rpd") == 1:
                break
        return chosen, big

    metadata: dict = {}
    chosen, big = asyncio.run(run())
    assert big is not None and big.taken and big.asks[0].tokens > 10_000
    assert chosen["model_info"]["id"] == plan.deployment_id
    assert _used(client, plan, "rpd") == 1  # two reserved, the prefetch's given back
    assert _used(client, plan, "tpd") == metadata["router_plugin"]["tokens"] < 10_000  # the prefetch's tokens: back


@needs_108("the reservation lane and the prefetch", "redis-py carries the reservations; no prefetch")
def test_no_prefetch_for_a_malformed_or_unknown_request_or_when_waiting_is_allowed(sim, redis_url):
    from router_plugin.adapter.installer import installed
    from router_plugin.demo import DEMO_GROUP

    router = _router(sim, redis_url)
    inst = installed(router)

    async def run():
        if inst.strategy.ready is not None:
            await inst.strategy.ready()
        s = inst.strategy
        out = [s.prefetch("no-such-group", [{"role": "user", "content": "hi"}], {}),
               s.prefetch(DEMO_GROUP, [{"role": "nobody", "content": 3}], {}),
               s.prefetch(DEMO_GROUP, [{"role": "user", "content": "hi"}], {"tools": [{"type": "function"}]})]
        ok = s.prefetch(DEMO_GROUP, [{"role": "user", "content": "hi"}], {})
        ok.release()
        return out, ok

    out, ok = asyncio.run(run())
    assert out == [None, None, None] and ok is not None


def test_calls_while_redis_is_down_are_one_outage_not_one_each(tmp_path):
    """``reserve_first`` through the resilient store is guarded once: a call guarded twice turned each failure into
    a new outage and its local answer into a recovery (1.110.2's SDK run: outages 6 where 1 was due)."""
    from router_plugin.store import open_stores
    from tests.servers import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    store, _ = open_stores(resolve_target(server.url, None, 0.5), "lane-test:", expected_workers=4)

    async def run():
        assert isinstance(await store.reserve_first([Ask(_plan(), 1)]), Reservation)
        server.stop()
        for _ in range(5):
            await store.reserve_first([Ask(_plan(), 1)])  # the local share answers
        return store.guard.outages, store.guard.reachable

    try:
        assert asyncio.run(run()) == (1, False)
    finally:
        server.stop()
