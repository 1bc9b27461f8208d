"""Background calibration against the simulator and a real redis-server: one worker at a time, never in the way."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis

import router_plugin
from router_plugin import roster
from router_plugin.calibration import Calibrator
from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config
from router_plugin.adapter.installer import installed
from router_plugin.report import open_store, take_snapshot
from router_plugin.sim.catalog import OPENROUTER_MODELS
from tests.support import bare
from router_plugin.adapter.router_api import all_deployments

pytestmark = pytest.mark.integration

OR_A, OR_B, GQ_A, GQ_B = DEMO_CHAIN
MSG = [{"role": "user", "content": "hello"}]


def calibrator_of(router) -> Calibrator:
    return next(o for o in installed(router).events.observers if isinstance(o, Calibrator))


def snapshot(router):
    inst = installed(router)
    return take_snapshot(open_store(inst.settings), [inst.plans.plan(d) for d in all_deployments(router)])


def test_two_calibrators_one_runs_and_it_syncs_the_day_and_quarantines_the_gone(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"gone": True}, bare(GQ_B): {"gone": True}},
                   "openrouter": {"accounts": {"sim-openrouter-key": {"used_today": 45}}}})
    config = demo_config(sim.base_url, redis_url=redis_url, redis_timeout_s=5, key_prefix="t4:",
                         calibration={"interval_s": 600})
    workers = [router_plugin.build_router(config), router_plugin.build_router(config)]
    first, second = (calibrator_of(r) for r in workers)
    assert not first._tasks and not second._tasks  # nothing started at install: no thread, no task

    async def both():
        return await asyncio.gather(first.run_once(), second.run_once())

    runs = asyncio.run(both())
    assert sorted(r.ran for r in runs) == [False, True]
    ran = next(r for r in runs if r.ran)
    skipped = next(r for r in runs if not r.ran)
    assert skipped.skipped == "another worker calibrated within the interval" and not skipped.quarantined
    assert ran.errors == [] and sorted(ran.quarantined) == sorted([OR_A, GQ_B])
    assert list(ran.day_used.values()) == [45]
    lease = redis.Redis.from_url(redis_url).pttl("t4:calibration:lock")
    assert 0 < lease <= 600_000  # under the plugin's key_prefix, expiring by itself

    snap = snapshot(workers[0])
    day = next(lim for lim in snap.pools[0].limits if lim.counter == "day")
    assert day.used == 45 and day.remaining == 5
    gone = snap.deployment(OR_A)
    assert gone.state == "quarantined" and gone.reason == (
        f"quarantined: left the openrouter roster (GET /models no longer lists {bare(OR_A)})")
    assert 6 * 3600 - 60 < gone.until - snap.now <= 6 * 3600
    assert snap.deployment(GQ_B).state == "quarantined" and snap.deployment(OR_B).state == "ok"

    # Workers now route around the quarantined model without ever sending it a request.
    async def ask():
        metadata: dict = {}
        await workers[1].acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=8, metadata=metadata)
        return metadata["router_plugin"]

    info = asyncio.run(ask())
    assert info["model"] == OR_B and info["attempts"] == 1
    assert sim.stats()["requests"]["openrouter"].get(bare(OR_A), 0) == 0

    again = asyncio.run(first.run_once())  # within the interval: the lease is still held
    assert not again.ran


def test_calibration_starts_lazily_in_the_event_loop_and_never_breaks_a_request(sim, redis_url, monkeypatch, caplog):
    config = demo_config(sim.base_url, redis_url=redis_url, redis_timeout_s=5, calibration={"interval_s": 600})
    router = router_plugin.build_router(config)
    calibrator = calibrator_of(router)

    async def broken(*args, **kwargs):
        raise RuntimeError("roster endpoint exploded")

    monkeypatch.setattr(roster, "fetch_rosters", broken)

    async def go():
        metadata: dict = {}
        await router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=8, metadata=metadata)
        assert len(calibrator._tasks) == 1  # started by the first routing decision, in this loop
        task = next(iter(calibrator._tasks.values()))
        for _ in range(100):  # let the background run happen
            if any("without calibration" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.02)
        metadata2: dict = {}
        await router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=8, metadata=metadata2)
        assert not task.done()  # still alive, waiting for the next interval
        return metadata["router_plugin"], metadata2["router_plugin"]

    with caplog.at_level(logging.WARNING, logger="router_plugin"):
        first, second = asyncio.run(go())
    assert first["model"] == second["model"] == OR_A
    assert any("admitting without calibration (RuntimeError: roster endpoint exploded)" in r.getMessage()
               for r in caplog.records)


def test_an_empty_roster_quarantines_nothing_and_a_tier_mismatch_is_logged(sim, redis_url, caplog):
    sim.configure({"models": {model_id: {"gone": True} for model_id in OPENROUTER_MODELS},
                   "openrouter": {"accounts": {"sim-openrouter-key": {"funded": True}}}})
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, redis_timeout_s=5,
                                                    calibration={"interval_s": 60}))
    with caplog.at_level(logging.WARNING, logger="router_plugin"):
        run = asyncio.run(calibrator_of(router).run_once())
    assert run.ran and run.quarantined == []  # OpenRouter listing nothing is a glitch, not every model gone
    assert all(d.state == "ok" for d in snapshot(router).deployments)
    warning = next(r.getMessage() for r in caplog.records if "openrouter.tier" in r.getMessage())
    assert "config says free (50/day) but the key allows 1000/day" in warning
    assert "set router_plugin.openrouter.tier: funded" in warning
