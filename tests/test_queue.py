"""Waiting in order (issue 17 item 4): with max_wait_s > 0, requests that wait are admitted in priority order, then
first come first served, across worker processes; a dead worker's ticket does not block the line; the line is
bounded; a waiter does not poll. Real redis-server, real processes, the simulator."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import time

import pytest
import redis

from router_plugin.adapter.router_api import all_deployments
from router_plugin.store import QuotaStore, resolve_target
from router_plugin.store.queue import LineFull, WaitQueue, line_keys, waiting_by_priority

pytestmark = pytest.mark.integration

GROUP = "free-chat"
MODEL = "groq/openai/gpt-oss-120b"


def _store(url: str) -> QuotaStore:
    return QuotaStore(resolve_target(url, None, 5.0), "rp:")


def _line_size(url: str, group: str = GROUP) -> int:
    return redis.Redis.from_url(url).zcard(line_keys("rp:", group)[0][0])


def _wait_for(pred, timeout_s: float = 90.0, what: str = "") -> None:
    end = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---- the line itself, several processes ----------------------------------------------------------------------

def _hold_the_line(url: str, ttl_s: float) -> None:  # a child: takes a ticket, becomes the head, never leaves
    async def go():
        queue = WaitQueue(_store(url), ticket_ttl_s=ttl_s)
        turn = queue.turn(GROUP, 0, time.monotonic() + 600)
        await turn._join()
        while True:
            await asyncio.sleep(3600)

    asyncio.run(go())


def test_a_dead_workers_ticket_does_not_block_the_line(redis_url):
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_hold_the_line, args=(redis_url, 1.0), daemon=True)
    child.start()
    try:
        _wait_for(lambda: _line_size(redis_url) == 1, what="the child's ticket")

        async def behind() -> tuple[bool, bool]:
            queue = WaitQueue(_store(redis_url), ticket_ttl_s=1.0, beat_s=0.2)
            turn = queue.turn(GROUP, 0, time.monotonic() + 30)
            first = await turn.may_try()  # the child's ticket is ahead: not yet
            os.kill(child.pid, signal.SIGKILL)
            while not await turn.may_try():
                if turn.expired:
                    return first, False
                await turn.sleep(None)
            await turn.leave()
            return first, True

        first, admitted = asyncio.run(behind())
    finally:
        if child.is_alive():
            child.kill()
        child.join(10)
    assert first is False
    assert admitted is True  # the dead ticket was dropped when its heartbeat ended
    assert _line_size(redis_url) == 0


def test_the_line_is_bounded(redis_url):
    async def go():
        queue = WaitQueue(_store(redis_url), max_waiters=3)
        turns = [queue.turn(GROUP, 1) for _ in range(3)]
        for t in turns:
            await t._join()
        late = queue.turn(GROUP, 0)
        with pytest.raises(LineFull) as refused:
            await late.sleep(1.0)
        for t in turns:
            await t.leave()
        return str(refused.value)

    message = asyncio.run(go())
    assert message == ("3 requests are already waiting for 'free-chat' (router_plugin.max_waiters is 3); refused at "
                       "once instead of queueing — retry later or raise max_waiters")


class _Counting:
    """Counts the Redis commands a client sends (script calls count once)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name == "register_script":
            def register(src):
                script = attr(src)

                async def run(*a, **kw):
                    self.calls += 1
                    return await script(*a, **kw)
                return run
            return register
        if callable(attr) and asyncio.iscoroutinefunction(attr):
            async def call(*a, **kw):
                self.calls += 1
                return await attr(*a, **kw)
            return call
        return attr


def test_waiters_do_not_poll(redis_url):
    """Four waiters behind a head that holds the line for 3 s: each renews its ticket every beat (1 s) with one
    BLPOP and one script call, nothing more -- not a call per few milliseconds."""
    async def go():
        store = _store(redis_url)
        queue = WaitQueue(store, ticket_ttl_s=3.0, beat_s=1.0)
        head = queue.turn(GROUP, 0, time.monotonic() + 60)
        await head._join()
        counted = _Counting(store.client)
        blocking = _Counting(queue._clients()["blocking"])
        queue._per_loop[asyncio.get_running_loop()] = {"client": counted, "blocking": blocking,
                                                       "script": counted.register_script(
                                                           __import__("router_plugin.store.queue",
                                                                      fromlist=["SCRIPT"]).SCRIPT)}
        waiters = [queue.turn(GROUP, 1, time.monotonic() + 60) for _ in range(4)]

        async def wait(turn):
            while not await turn.may_try():
                await turn.sleep(None)
            await turn.leave()

        tasks = [asyncio.ensure_future(wait(t)) for t in waiters]
        await asyncio.sleep(3.0)
        before_release = counted.calls + blocking.calls
        await head.leave()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return before_release, [t.calls for t in waiters]

    before_release, per_waiter = asyncio.run(go())
    # 3 s of waiting = ~3 beats: ahead + join + 3 x (BLPOP + beat) = 8 calls; a poll every 10 ms would be ~300
    assert before_release <= 4 * 12
    assert all(n <= 20 for n in per_waiter), per_waiter


def test_status_helper_counts_waiters_per_priority(redis_url):
    async def go():
        queue = WaitQueue(_store(redis_url))
        turns = [queue.turn(GROUP, p) for p in (1, 0, 1, 2)]
        for t in turns:
            await t._join()
        return turns

    asyncio.run(go())
    assert waiting_by_priority(redis.Redis.from_url(redis_url), "rp:", GROUP) == {0: 1, 1: 2, 2: 1}


def test_while_the_store_is_down_requests_wait_in_an_in_process_line_in_the_same_order():
    """fail_open: the resilient store's guard says Redis is unreachable; the in-process twin keeps the order."""
    from types import SimpleNamespace

    from router_plugin.store._codec import KeySpace

    down = SimpleNamespace(keys=KeySpace("rp:"), guard=SimpleNamespace(reachable=False))

    async def go():
        queue = WaitQueue(down)
        blocker = queue.turn(GROUP, 0, time.monotonic() + 30)
        assert blocker.mode == "local"
        queue.local._join(blocker)  # the head, trying to reserve
        order: list[str] = []

        async def request(name: str, priority: int):
            turn = queue.turn(GROUP, priority, time.monotonic() + 30)
            while not await turn.may_try():
                await turn.sleep(None)
            order.append(name)
            await turn.leave()

        tasks = []
        for name, priority in [("a", 1), ("b", 1), ("c", 0), ("d", 1), ("e", 0)]:
            tasks.append(asyncio.ensure_future(request(name, priority)))
            await asyncio.sleep(0.01)
        assert order == []
        await blocker.leave()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return order

    assert asyncio.run(go()) == ["c", "e", "a", "b", "d"]


# ---- through the Router: real worker processes waiting on one exhausted pool ---------------------------------

def _worker(sim_url: str, redis_url: str, name: str, priority: int) -> None:  # a child process
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from router_plugin.adapter.installer import build_router, installed
    from router_plugin.demo import demo_config
    from router_plugin.events import Observer

    config = demo_config(sim_url, redis_url=redis_url, chain=(MODEL,), max_wait_s=300, redis_timeout_s=5,
                         calibration={"interval_s": 0}, timeouts={"total_s": 300})  # slow process starts: patience
    router = build_router(config)
    log = redis.Redis.from_url(redis_url)

    class Admitted(Observer):
        def routed(self, group, plan, attempt, skipped, reservation):
            log.rpush("test:admitted", name)  # before the request leaves the line: the order of admissions

    installed(router).events.add(Admitted())

    async def go():
        await router.acompletion(model=GROUP, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                 metadata={"priority": priority})

    asyncio.run(go())


def test_waiting_workers_are_admitted_in_priority_then_arrival_order(sim, redis_url):
    from router_plugin._plans import PlanBook
    from router_plugin.config import load_config
    from router_plugin.demo import demo_config
    from router_plugin.store import SyncQuotaStore

    cfg = load_config(demo_config(sim.base_url, redis_url=redis_url, chain=(MODEL,)))
    plan = PlanBook(cfg.settings.plan_inputs).plan(cfg.model_list[0])
    day = next(c for c in plan.counters if c.limit.name == "rpd")
    store = SyncQuotaStore(resolve_target(redis_url, None, 5.0), "rp:")
    client = redis.Redis.from_url(redis_url)

    def hold(seconds: float = 3.0) -> None:  # the pool is exhausted (as after a provider 429) for a while yet
        now_ms = int(float(".".join(str(x) for x in client.time())) * 1000)
        store.block(plan, day, now_ms + int(seconds * 1000), "exhausted (provider 429)")

    arrivals = [("a", 1), ("b", 1), ("c", 0), ("d", 1), ("e", 0)]
    ctx = mp.get_context("spawn")
    procs = []
    hold()
    try:
        for i, (name, priority) in enumerate(arrivals, 1):
            proc = ctx.Process(target=_worker, args=(sim.base_url, redis_url, name, priority), daemon=True)
            proc.start()
            procs.append(proc)
            end = time.monotonic() + 200
            while _line_size(redis_url) < i:  # each one waits in line before the next arrives
                assert time.monotonic() < end, f"{name} never joined the line"
                hold()
                time.sleep(0.1)
        # nobody is admitted while the pool is held; then the hold ends and the line moves
        assert client.lrange("test:admitted", 0, -1) == []
        for proc in procs:
            proc.join(200)
        assert [p.exitcode for p in procs] == [0] * len(procs)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    order = [x.decode() for x in client.lrange("test:admitted", 0, -1)]
    assert order == ["c", "e", "a", "b", "d"]
    assert _line_size(redis_url) == 0


def test_a_full_line_is_refused_at_once_through_the_router(sim, redis_url):
    import litellm

    import router_plugin
    from router_plugin.demo import demo_config

    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, chain=(MODEL,), max_wait_s=30,
                                                    max_waiters=1, calibration={"interval_s": 0}))

    async def go():
        holder = WaitQueue(_store(redis_url)).turn(GROUP, 0)
        await holder._join()  # one request already waits: the line (max_waiters 1) is full
        started = time.monotonic()
        with pytest.raises(litellm.RateLimitError) as refused:
            await router.acompletion(model=GROUP, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                     metadata={"priority": 1})
        return str(refused.value), time.monotonic() - started

    text, _ = asyncio.run(go())
    assert ("router_plugin: 1 requests are already waiting for 'free-chat' (router_plugin.max_waiters is 1); "
            "refused at once instead of queueing — retry later or raise max_waiters") in text
    assert sim.stats()["requests"]["groq"] == {}  # nothing was sent


def test_time_spent_waiting_is_not_the_deployments_silence(sim, redis_url):
    """An attempt's reply limit (timeouts.connect_s + first_token_s = 2.5 s here) counts from when its deployment
    is chosen: a request that waited 4 s for the pool, then got a reply 1.5 s later, is served at its first attempt
    (its wait did not time the attempt out, nor make it leave its place in line), nothing set aside."""
    import router_plugin
    from router_plugin.adapter.installer import installed
    from router_plugin.demo import demo_config
    from tests.support import FAST

    router = router_plugin.build_router(demo_config(
        sim.base_url, redis_url=redis_url, chain=(MODEL,), max_wait_s=20, calibration={"interval_s": 0},
        timeouts={**FAST["timeouts"], "total_s": 30.0}))
    inst = installed(router)
    plan = inst.plans.plan(all_deployments(router)[0])
    day = next(c for c in plan.counters if c.limit.name == "rpd")
    sim.configure({"models": {MODEL.split("/", 1)[1]: {"latency_ms": 1500}}})
    client = redis.Redis.from_url(redis_url)
    seconds, micros = client.time()
    inst.sync_store.block(plan, day, int(seconds) * 1000 + int(micros) // 1000 + 4000, "exhausted (provider 429)")

    async def go():
        metadata: dict = {"priority": 1}
        await router.acompletion(model=GROUP, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                 metadata=metadata)
        return metadata["router_plugin"]

    joins = []
    original = WaitQueue.call

    async def spy(self, group, op, ticket="", priority=0):
        joins.append(op) if op == "join" else None
        return await original(self, group, op, ticket, priority)

    WaitQueue.call = spy
    try:
        info = asyncio.run(go())
    finally:
        WaitQueue.call = original
    assert joins == ["join"]  # one place in line, kept until served
    assert info["model"] == MODEL and info["attempts"] == 1
    until, = client.hmget(inst.sync_store.keys.model(plan), "until")
    assert until is None  # the model was never set aside as silent
