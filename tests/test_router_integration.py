"""The router end to end: a real LiteLLM Router, a real redis-server, the simulator serving HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math
import time

import litellm
import pytest

import router_plugin
from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config, run_burst
from router_plugin.adapter.installer import installed
from tests.support import bare, sent
from router_plugin.adapter.router_api import all_deployments

pytestmark = pytest.mark.integration

OR_A, OR_B, GQ_A, GQ_B = DEMO_CHAIN
MSG = [{"role": "user", "content": "hello"}]


def provider_429s(sim) -> int:
    return sum(sim.stats()["rate_limited"].values())


async def ask(router, **kw):
    metadata: dict = {}
    response = await router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=16, metadata=metadata, **kw)
    return response, metadata["router_plugin"]


def test_four_processes_burst_serves_the_capacity_and_sends_zero_429s(sim, redis_url):
    result = run_burst(demo_config(sim.base_url, redis_url=redis_url), workers=4, per_worker=25,
                       min_minute_left_s=30)
    duration = result.ended - result.started
    # Capacity in one clock minute: 20 (one OpenRouter account) + 30 + 30 (two Groq models). Groq refills
    # continuously, so a slow burst may legitimately serve one more per Groq model every 2 s.
    refill_allowance = 2 * math.ceil(duration / 2)
    served = result.served_by()
    assert served[OR_A] + served[OR_B] == 20, served  # the two :free models share ONE account pool
    assert 30 <= served[GQ_A] <= 30 + refill_allowance // 2
    assert 30 <= served[GQ_B] <= 30 + refill_allowance // 2
    assert provider_429s(sim) == 0  # not one request was sent where it could not succeed
    assert sum(sim.stats()["responses"]["openrouter"].values()) == 20
    assert len(result.failed) == 0, result.failed[:3]
    assert len(result.served) + len(result.refused) == 100
    for refusal in result.refused:
        assert refusal.attempts == 0  # refused at once, nothing sent upstream
        assert "OpenRouter free requests/min" in refusal.error and "exhausted until" in refusal.error


def test_one_day_429_stops_every_worker_from_sending_free_requests(sim, redis_url):
    # The account has spent its day elsewhere (another app, an earlier run): the plugin does not know
    # (calibration off; with it on, the key endpoint tells it first: tests/test_calibration_fleet.py).
    sim.configure({"openrouter": {"accounts": {"sim-openrouter-key": {"used_today": 50}}}})
    config = demo_config(sim.base_url, redis_url=redis_url, calibration={"interval_s": 0})
    router = router_plugin.build_router(config)

    response, info = asyncio.run(ask(router))
    assert info["model"] == GQ_A and info["attempts"] == 2  # the 429 fell over to Groq in the same request
    assert sim.stats()["rate_limited"]["openrouter"] == 1
    free_requests_before = sent(sim, OR_A) + sent(sim, OR_B)

    result = run_burst(config, workers=3, per_worker=5)
    assert len(result.served) == 15 and all(o.model.startswith("groq/") for o in result.served)
    assert sent(sim, OR_A) + sent(sim, OR_B) == free_requests_before  # nobody tried again
    inst = installed(router)
    blocked = inst.sync_store.peek(inst.plans.plan(all_deployments(router)[1]))
    midnight = (time.time() // 86400 + 1) * 86400
    assert blocked.counter.key == "day" and blocked.until_ms == int(midnight * 1000)


def test_gone_model_is_quarantined_for_every_worker(sim, redis_url, caplog):
    sim.configure({"models": {bare(OR_A): {"gone": True}}})
    config = demo_config(sim.base_url, redis_url=redis_url, calibration={"interval_s": 0})  # the 404 path
    router = router_plugin.build_router(config)
    with caplog.at_level("ERROR", logger="router_plugin"):
        response, info = asyncio.run(ask(router))
    assert info["model"] == OR_B and info["attempts"] == 2
    assert any("is gone" in r.getMessage() and "quarantined" in r.getMessage() for r in caplog.records)

    result = run_burst(config, workers=3, per_worker=4)
    assert len(result.served) == 12
    assert sent(sim, OR_A) == 1  # the one 404, then never again from any worker
    assert OR_A not in result.served_by()


def test_upstream_busy_cools_only_that_model_not_the_account(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"busy": True}}})
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url))
    _, info = asyncio.run(ask(router))
    assert info["model"] == OR_B  # the other :free model of the same account still serves
    _, info = asyncio.run(ask(router))
    assert info["model"] == OR_B and info["attempts"] == 1
    assert sent(sim, OR_A) == 1


def test_server_error_gets_a_short_cooldown_and_fails_over(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"status": 502}}})
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url))
    _, info = asyncio.run(ask(router))
    assert info["model"] == OR_B
    inst = installed(router)
    cooled = inst.sync_store.peek(inst.plans.plan(all_deployments(router)[0]))
    assert cooled.counter is None and "failing" in cooled.why
    assert 0 < cooled.wait_s <= inst.settings.cooldowns.server_error_s


def test_deployment_whose_context_is_too_small_is_skipped_unsent(sim, redis_url):
    config = demo_config(sim.base_url, redis_url=redis_url,
                         limits={OR_A: {"context": 200}, OR_B: {"context": 200}})
    router = router_plugin.build_router(config)
    long_prompt = [{"role": "user", "content": "word " * 400}]

    async def go():
        metadata: dict = {}
        await router.acompletion(model=DEMO_GROUP, messages=long_prompt, max_tokens=16, metadata=metadata)
        return metadata["router_plugin"]

    info = asyncio.run(go())
    assert info["model"] == GQ_A
    assert sent(sim, OR_A) == sent(sim, OR_B) == 0


def test_refusal_names_each_pool_and_sets_retry_after(sim, redis_url):
    config = demo_config(sim.base_url, redis_url=redis_url, chain=(OR_A, OR_B),
                         limits={"openrouter": {"rpm": 2}})
    router = router_plugin.build_router(config)
    asyncio.run(ask(router))
    asyncio.run(ask(router))
    before = sent(sim, OR_A) + sent(sim, OR_B)
    with pytest.raises(router_plugin.QuotaExhaustedError) as err:
        asyncio.run(ask(router))
    assert isinstance(err.value, litellm.RateLimitError) and err.value.status_code == 429
    assert "OpenRouter free requests/min (account" in str(err.value) and "exhausted until" in str(err.value)
    assert str(err.value).count("OpenRouter free requests/min") == 1  # one pool, named once
    assert 1 <= int(err.value.headers["retry-after"]) <= 60
    assert sent(sim, OR_A) + sent(sim, OR_B) == before  # nothing was sent


def test_max_wait_waits_for_the_earliest_reset_instead_of_failing(sim, redis_url):
    def router_with(**settings):
        return router_plugin.build_router(demo_config(
            sim.base_url, redis_url=redis_url, chain=(GQ_B,), limits={GQ_B: {"rpm": 60}},  # one per second
            arrival_margin_s=0.5, **settings))

    impatient, patient = router_with(), router_with(max_wait_s=5)
    inst = installed(impatient)
    plan = inst.plans.plan(all_deployments(impatient)[0])
    while not hasattr(inst.sync_store.reserve(plan, 10), "never"):  # spend the minute without sending
        pass
    with pytest.raises(router_plugin.QuotaExhaustedError):
        asyncio.run(ask(impatient))
    assert sent(sim, GQ_B) == 0
    _, info = asyncio.run(ask(patient))  # waits ~1.5 s for the refill instead of failing
    assert info["model"] == GQ_B and sent(sim, GQ_B) == 1


def test_streaming_request_is_reserved_and_settled(sim, redis_url):
    # OpenRouter sends no rate-limit headers on success, so what is seen is the settlement alone (a Groq stream
    # would also calibrate from x-ratelimit-remaining-tokens, which Groq computes with max_tokens reserved).
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, chain=(OR_A,),
                                                    limits={OR_A: {"tpm": 8000}}))
    inst = installed(router)
    plan = inst.plans.plan(all_deployments(router)[0])

    async def go():
        metadata: dict = {}
        stream = await router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=500, stream=True,
                                          stream_options={"include_usage": True}, metadata=metadata)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        reserved_left = inst.sync_store.peek(plan).remaining("tpm").remaining
        for _ in range(50):  # LiteLLM runs the success callback as a background task after the last chunk
            if inst.sync_store.peek(plan).remaining("tpm").remaining > 8000 - 100:
                break
            await asyncio.sleep(0.1)
        return text, metadata["router_plugin"], reserved_left

    text, info, reserved_left = asyncio.run(go())
    assert text and info["model"] == OR_A
    assert info["tokens"] > 500 and reserved_left <= 8000 - 500  # prompt estimate + max_tokens were reserved ...
    assert inst.sync_store.peek(plan).remaining("tpm").remaining > 8000 - 100  # ... then settled to real usage


def test_sync_completion_uses_the_same_strategy(sim, redis_url):
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url,
                                                    limits={"openrouter": {"rpm": 1}}))
    metadata: dict = {}
    router.completion(model=DEMO_GROUP, messages=MSG, max_tokens=8, metadata=metadata)
    assert metadata["router_plugin"]["model"] == OR_A
    metadata = {}
    router.completion(model=DEMO_GROUP, messages=MSG, max_tokens=8, metadata=metadata)
    assert metadata["router_plugin"]["model"] == GQ_A  # the account's 1/min is spent: Groq


def test_unknown_model_group_is_a_clear_error(sim, redis_url):
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url))
    with pytest.raises(litellm.BadRequestError, match="no model group named 'nope'; configured groups: free-chat"):
        asyncio.run(router.acompletion(model="nope", messages=MSG))


def test_redis_down_is_a_clear_error(sim):
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url="redis://127.0.0.1:1/0", on_store_error="fail_closed"))
    with pytest.raises(Exception, match=r"quota store redis://127.0.0.1:1/0 failed to reserve.*set router_plugin.redis_url"):
        asyncio.run(ask(router))
    assert sum(sim.stats()["responses"]["openrouter"].values()) == 0


def test_many_routers_share_one_callback_entry_and_each_gets_its_own_events(sim, redis_url):
    """LiteLLM caps its process-wide callback lists at MAX_CALLBACKS (100) and drops new entries past it. A service
    that builds Routers over and over must not fill them (its newest Router would run without callbacks: nothing
    settled, no failure recorded). (Stock LiteLLM's Router adds bound methods of its own to the success lists, so
    LiteLLM itself keeps every Router alive; the plugin adds nothing per Router.)"""
    from litellm.constants import MAX_CALLBACKS

    from router_plugin.adapter.callbacks import DISPATCH
    from router_plugin.events import Observer

    config = demo_config(sim.base_url, redis_url=redis_url)
    for _ in range(MAX_CALLBACKS + 5):
        router_plugin.build_router(config)
    assert sum(cb is DISPATCH for cb in litellm.callbacks) == 1
    assert not any(type(cb).__name__ == "QuotaCallbacks" for cb in litellm.callbacks)

    class Seen(Observer):
        def __init__(self):
            self.ok = []

        def succeeded(self, plan, total_tokens):
            self.ok.append((plan.model, total_tokens))

    routers = [router_plugin.build_router(config) for _ in range(2)]
    seen = [Seen(), Seen()]
    for router, observer in zip(routers, seen):
        installed(router).events.add(observer)

    async def go():
        await ask(routers[1])
        for _ in range(100):  # the success event runs in the background, after the caller has its answer
            if seen[1].ok:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # a second delivery of the same event would land here

    asyncio.run(go())
    assert sum(cb is DISPATCH for cb in litellm._async_success_callback) == 1
    assert len(seen[1].ok) == 1 and seen[1].ok[0][1] > 0  # settled with the real usage
    assert seen[0].ok == []  # the other Router's callbacks never see this request
