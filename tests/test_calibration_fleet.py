"""Issue 13's table: 4 processes x 25 requests, cold start, DEFAULT settings, a real redis-server and the simulator.

What the providers publish for free (OpenRouter /api/v1/key and /models, Groq /openai/v1/models) is learnt once for
the whole fleet before the first admission: other apps' requests today, models that left the roster, keys of one
account.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import router_plugin
from router_plugin.calibration import calibrator_of
from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config, run_burst
from router_plugin.adapter.installer import installed
from tests.support import bare, sent
from router_plugin.adapter.router_api import all_deployments

pytestmark = pytest.mark.integration

OR_A, OR_B, GQ_A, GQ_B = DEMO_CHAIN
MSG = [{"role": "user", "content": "hello"}]
GONE = "openrouter/deepseek/deepseek-r1:free"  # removed by OpenRouter on 2026-03-22 (providers.md §1.8)


def limit_429s(sim, provider: str, reason: str) -> int:
    return sum(1 for e in sim.stats()["log"] if e["provider"] == provider and e["status"] == 429
               and e["reason"] == reason)


def test_other_apps_used_45_of_50_today_at_most_one_day_429(sim, redis_url):
    sim.configure({"openrouter": {"accounts": {"sim-openrouter-key": {"used_today": 45}}}})
    result = run_burst(demo_config(sim.base_url, redis_url=redis_url), workers=4, per_worker=25,
                       min_minute_left_s=30)
    assert limit_429s(sim, "openrouter", "day") <= 1
    assert sent(sim, OR_A) + sent(sim, OR_B) <= 6  # the 5 left today (+ at most the one 429)
    assert len(result.failed) == 0, result.failed[:3]
    assert sim.stats()["endpoints"]["openrouter /key"] == 1  # one refresh for the fleet of 4


def test_gone_model_gets_at_most_one_call_and_78_of_100_are_served(sim, redis_url):
    sim.configure({"models": {bare(GONE): {"gone": True}}})
    chain = (GONE, OR_A, GQ_A, GQ_B)
    result = run_burst(demo_config(sim.base_url, redis_url=redis_url, chain=chain), workers=4, per_worker=25,
                       min_minute_left_s=30)
    assert sent(sim, GONE) <= 1
    assert len(result.served) >= 78, result.served_by()
    assert len(result.failed) == 0, result.failed[:3]


def test_two_keys_of_one_account_share_twenty_a_minute(sim, redis_url):
    sim.configure({"openrouter": {"keys": {"sim-or-key-1": "me", "sim-or-key-2": "me"}}})
    config = demo_config(sim.base_url, redis_url=redis_url, openrouter_key="sim-or-key-1")
    config["model_list"][1]["litellm_params"]["api_key"] = "sim-or-key-2"
    result = run_burst(config, workers=4, per_worker=25, min_minute_left_s=30)
    served = result.served_by()
    assert served[OR_A] + served[OR_B] == 20, served
    assert sim.stats()["rate_limited"]["openrouter"] == 0
    assert len(result.failed) == 0, result.failed[:3]


def test_keys_of_two_accounts_are_split_by_the_key_endpoint_and_named_accounts_win(sim, redis_url):
    # The sim maps each key to its own account (no "keys" switch): /api/v1/key reports two creator_user_ids.
    config = demo_config(sim.base_url, redis_url=redis_url, openrouter_key="sim-or-key-1")
    config["model_list"][1]["litellm_params"]["api_key"] = "sim-or-key-2"
    router = router_plugin.build_router(config)
    inst = installed(router)
    slots = lambda: {inst.plans.plan(d).slot for d in all_deployments(router)[:2]}  # noqa: E731
    assert len(slots()) == 1  # before the key endpoint answers: one account

    async def ask():
        metadata: dict = {}
        await router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=8, metadata=metadata)

    asyncio.run(ask())
    assert calibrator_of(router).first == "calibrated"
    assert len(slots()) == 2  # two creators: two pools of 20

    named = demo_config(sim.base_url, redis_url=redis_url, openrouter_key="sim-or-key-3", key_prefix="n:",
                        calibration={"interval_s": 0})
    named["model_list"][1]["litellm_params"]["api_key"] = "sim-or-key-4"
    for d, name in zip(named["model_list"][:2], ("work", "home")):
        d["model_info"] = {"openrouter_account": name}
    r2 = router_plugin.build_router(named)
    assert len({installed(r2).plans.plan(d).slot for d in all_deployments(r2)[:2]}) == 2


def test_live_context_window_replaces_the_built_in_one(sim, redis_url):
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url))
    plan = lambda: installed(router).plans.plan(all_deployments(router)[2])  # noqa: E731
    assert plan().model == GQ_A
    from router_plugin.sim.catalog import GROQ_MODELS

    original = GROQ_MODELS[bare(GQ_A)]
    import dataclasses

    GROQ_MODELS[bare(GQ_A)] = dataclasses.replace(original, context_window=4_096)
    try:
        asyncio.run(router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=8))
    finally:
        GROQ_MODELS[bare(GQ_A)] = original
    assert plan().context_window == 4_096


def test_unreachable_endpoints_do_not_break_or_spam(redis_url, caplog):
    # api_base points at a port nobody listens on: every refresh fails at once; requests still run (and fail
    # upstream), and the failure is logged once, not per request.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = demo_config(f"http://127.0.0.1:{port}", redis_url=redis_url)
    router = router_plugin.build_router(config)

    async def go():
        for _ in range(3):
            try:
                await router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=8, num_retries=0)
            except Exception:
                pass

    with caplog.at_level(logging.WARNING, logger="router_plugin"):
        asyncio.run(go())
    calibrator = calibrator_of(router)
    assert calibrator.first == "calibrated"  # the leader's failed refresh is a result too: nobody waits for it
    failures = [r for r in caplog.records if "calibration:" in r.getMessage()]
    assert len(failures) == 1 and "changed nothing" in failures[0].getMessage()
    assert all(d.get("model_info") for d in all_deployments(router))


def test_recalibrate_now_puts_the_days_count_back_after_the_store_came_back_empty(sim, redis_url, redis_server):
    # For the store's on_empty hook (issue 14): Redis restarted without persistence mid-day.
    from router_plugin.calibration import recalibrate_now
    from router_plugin.report import open_store, take_snapshot

    sim.configure({"openrouter": {"accounts": {"sim-openrouter-key": {"used_today": 30}}}})
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url))
    inst = installed(router)

    def day_used() -> int:
        snap = take_snapshot(open_store(inst.settings), [inst.plans.plan(d) for d in all_deployments(router)])
        return next(lim for lim in snap.pools[0].limits if lim.counter == "day").used

    async def ask():
        await router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=8)

    asyncio.run(ask())
    assert day_used() == 31
    redis_server.client().flushall()  # the store comes back empty
    assert day_used() == 0
    run = asyncio.run(recalibrate_now(router))
    assert run.ran and day_used() == 31


def test_a_store_that_came_back_empty_is_recalibrated_before_admitting_again(sim, tmp_path, monkeypatch):
    # Issue 13 item 6 with issue 14's marker: Redis restarts WITHOUT persistence mid-day. The worker that finds the
    # marker gone (on reconnect) recalibrates from the key endpoint, so the day's count is back in the fresh store
    # instead of the whole day being admitted again. (Before the hook was wired the day read 1 after the restart.)
    from router_plugin import calibration
    from router_plugin.report import open_store, take_snapshot
    from router_plugin.store import resilient
    from tests.servers import RedisServer

    # The client's own reconnect hides a quick restart from the outage path; the periodic marker check (every
    # MARKER_CHECK_S, 30 s) finds it. Checked every 0.5 s here so the test does not wait half a minute.
    monkeypatch.setattr(resilient, "MARKER_CHECK_S", 0.5)
    server = RedisServer(tmp_path)
    server.start()
    try:
        sim.configure({"openrouter": {"accounts": {"sim-openrouter-key": {"used_today": 30}}}})
        router = router_plugin.build_router(demo_config(sim.base_url, redis_url=server.url, redis_timeout_s=0.5))
        inst = installed(router)

        def day_used() -> int:
            snap = take_snapshot(open_store(inst.settings), [inst.plans.plan(d) for d in all_deployments(router)])
            return next(lim for lim in snap.pools[0].limits if lim.counter == "day").used

        async def scenario() -> list[str]:
            await router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=8)
            assert day_used() == 31
            before = len(inst.store.guard.empty_events)  # "open": the store was new at start
            server.stop()
            server.start()  # same port, nothing persisted: the store is back, empty
            for _ in range(40):  # the worker notices the outage, probes again within 2 s, finds no marker
                try:
                    await router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=8, num_retries=0)
                except Exception:
                    pass
                if len(inst.store.guard.empty_events) > before:
                    break
                await asyncio.sleep(0.25)
            await asyncio.gather(*list(calibration._PENDING))
            return list(inst.store.guard.empty_events[before:])

        events = asyncio.run(scenario())
        assert events and "open" not in events, events
        # the provider's count (30 before + what reached it since) is back in the fresh store
        sent = sum(sim.stats()["responses"]["openrouter"].values())
        assert day_used() >= 30 + sent - 1, (day_used(), sent)
    finally:
        server.stop()
