"""Settles and calibrations off the request's path (store/batch.py, issue 18 item 2): queued per process, carried by
the next reservation's round trip or flushed within a few ms, at the latest when the loop closes or the process
exits; nothing lost."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import fakeredis
import pytest
import redis

from router_plugin.adapter.router_api import all_deployments
from router_plugin.limits import Counter, DeploymentPlan, Limit
from router_plugin.providers.facts import Remaining
from router_plugin.store import Ask, KeySpace, QuotaStore, Reservation, StoreTarget
from router_plugin.store import batch

ROOT = Path(__file__).resolve().parents[1]


def _plan() -> DeploymentPlan:
    tpd = Counter("tpd", Limit("tpd", 100_000, 86_400, "refill", "tokens"), "tpd limit")
    rpd = Counter("rpd", Limit("rpd", 1_000, 86_400, "refill", "requests"), "rpd limit")
    return DeploymentPlan("g", "chat", "groq/m", "groq", "gq:t:m", "groq/m", (rpd, tpd))


def _used(client, plan: DeploymentPlan, name: str) -> float:
    counter = next(c for c in plan.counters if c.key == name)
    return float(client.hget(KeySpace().counter(plan, counter), "used") or 0)


async def _load_scripts(store: QuotaStore) -> None:
    """Every script in the server, so a call is one EVALSHA (never EVALSHA, NOSCRIPT, load, EVALSHA)."""
    from router_plugin.store._codec import SCRIPTS

    for src in SCRIPTS.values():
        await store.client.script_load(src)


class Counting(fakeredis.FakeAsyncRedis):
    calls: list = []

    async def evalsha(self, sha, numkeys, *rest):
        type(self).calls.append(sha)
        return await super().evalsha(sha, numkeys, *rest)


def _counted_store():
    """A plan, an async store on fakeredis whose script calls are counted (``Counting.calls``), and a plain sync
    client on the same server to read the counters."""
    server = fakeredis.FakeServer()
    store = QuotaStore(StoreTarget(url="redis://fakeredis"), client=Counting(server=server))
    return _plan(), store, fakeredis.FakeRedis(server=server)

def test_a_settle_rides_on_the_next_reservation_no_round_trip_of_its_own():
    plan, store, sync = _counted_store()

    async def scenario():
        await _load_scripts(store)
        first = await store.reserve_first([Ask(plan, 500)])
        assert isinstance(first, Reservation)
        Counting.calls.clear()
        store.settle_later(first, 120, [Remaining("rpd", remaining=990, capacity=1000)])
        assert _used(sync, plan, "tpd") == pytest.approx(500, abs=1)  # not yet in Redis
        second = await store.reserve_first([Ask(plan, 500)])  # carries it
        assert isinstance(second, Reservation)
        assert len(Counting.calls) == 1  # one round trip for both
        assert _used(sync, plan, "tpd") == pytest.approx(620, abs=1)  # 120 + the second's 500
        assert _used(sync, plan, "rpd") == pytest.approx(11, abs=0.1)  # calibrated (10 used) + the second
        assert len(store.deferred) == 0 and store.deferred.folded == 1

    asyncio.run(scenario())


def test_without_a_reservation_the_settles_are_flushed_in_one_call_within_the_interval():
    plan, store, sync = _counted_store()

    async def scenario():
        await _load_scripts(store)
        got = [await store.reserve_first([Ask(plan, 100)]) for _ in range(5)]
        Counting.calls.clear()
        for r in got:
            store.settle_later(r, 10)
        await asyncio.sleep(batch.FLUSH_INTERVAL_S * 10)
        assert len(Counting.calls) == 1  # five settles, one adjust call
        assert _used(sync, plan, "tpd") == pytest.approx(50, abs=1)

    asyncio.run(scenario())


def test_what_is_queued_when_the_loop_closes_is_flushed_by_it():
    plan, store, sync = _counted_store()

    async def scenario():
        r = await store.reserve_first([Ask(plan, 100)])
        store.settle_later(r, 7)  # then asyncio.run returns at once: no reservation, no timer

    asyncio.run(scenario())
    assert _used(sync, plan, "tpd") == pytest.approx(7, abs=1)


def test_a_failed_flush_keeps_the_adjustments_and_says_so(caplog):
    plan = _plan()
    store = QuotaStore(StoreTarget(url="redis://127.0.0.1:1/0", timeout_s=0.3))

    async def scenario():
        r = Reservation(plan, 100, 0)
        store.settle_later(r, 7)
        with caplog.at_level("ERROR", logger="router_plugin.store"):
            await store.flush()
        assert len(store.deferred) == 1  # the tpd settle: kept
        assert "kept to send again" in caplog.text

    asyncio.run(scenario())
    store.deferred.take()  # not for the exit flush of this test process


_WORKER = textwrap.dedent("""
    import asyncio, json, sys
    import router_plugin
    from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config

    config = demo_config(sys.argv[1], redis_url=sys.argv[2], chain=(DEMO_CHAIN[2],), calibration={"interval_s": 0})
    router = router_plugin.build_router(config)

    async def one():
        metadata = {}
        reply = await router.acompletion(model=DEMO_GROUP, messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=300, metadata=metadata)
        print(json.dumps({"total": reply.usage.total_tokens, "reserved": metadata["router_plugin"]["tokens"]}))

    asyncio.run(one())
    sys.stdout.flush()
    # exits right after the call: whatever is deferred must reach Redis on the way out
""")


@pytest.mark.integration
def test_a_worker_that_exits_right_after_a_call_loses_no_settle(sim, redis_url, tmp_path):
    import router_plugin
    from router_plugin.adapter.installer import installed
    from router_plugin.demo import DEMO_CHAIN, demo_config

    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script), sim.base_url, redis_url], capture_output=True, text=True,
                          timeout=120, env=env, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["reserved"] - said["total"] > 100  # the estimate was far from the real usage
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, chain=(DEMO_CHAIN[2],),
                                                    calibration={"interval_s": 0}))
    plan = installed(router).plans.plan(all_deployments(router)[0])
    client = redis.Redis.from_url(redis_url)
    # settled to the real usage (the day bucket drains ~2.3 tokens/s between the reservation and the settle)
    assert said["total"] - 12 <= _used(client, plan, "tpd") <= said["total"]
    assert "Exception ignored" not in done.stderr and "Task was destroyed" not in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
def test_a_flush_while_redis_is_down_follows_the_fault_policy(policy, caplog):
    from router_plugin.store import resolve_target
    from router_plugin.store.resilient import open_resilient

    plan = _plan()
    store, _ = open_resilient(resolve_target("redis://127.0.0.1:1/0", None, 0.3), on_store_error=policy,
                              expected_workers=1)
    reservation = Reservation(plan, 10, 0)  # made in Redis before it went away: not the local limiter's

    async def scenario():
        store.settle_later(reservation, 60)  # 50 tokens more than reserved
        with caplog.at_level("ERROR", logger="router_plugin.store"):
            await store.flush()

    asyncio.run(scenario())
    guard = store.guard
    tpd = plan.counters[1]
    used, _ = guard.local.usage(guard.local.keys.counter(plan, tpd), guard.share_counter(tpd))
    if policy == "fail_open":  # applied to the local limiter (replayed into Redis when it answers again)
        assert used == pytest.approx(50, abs=1) and len(store.deferred) == 0
    else:  # kept, and said so
        assert used == 0 and len(store.deferred) == 1 and "kept to send again" in caplog.text
        store.deferred.take()
