"""Time limits, the overall budget, the retry discipline, the circuit and the accounting — SDK Router.

Real parts: a LiteLLM Router with the plugin, a real redis-server, the simulator on 127.0.0.1. Wall times are
generous behaviour bounds (a silent deployment must not hold the call for its 30 s), never performance claims.
"""

from __future__ import annotations

import asyncio
import time

import litellm
import pytest

import router_plugin
from router_plugin import circuit
from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config
from router_plugin.adapter.installer import installed
from router_plugin.adapter.strategy import ChainFailedError
from router_plugin.adapter.timeouts import BudgetExceededError
from tests.support import FAST, bare, needs_108, observe, sent, whole
from router_plugin.adapter.router_api import all_deployments

pytestmark = pytest.mark.integration

OR_A, OR_B, GQ_A, GQ_B = DEMO_CHAIN
GEMINI = "openrouter/google/gemini-2.0-flash-exp:free"
# Generic OpenAI-compatible upstreams (a self-hosted vLLM, another provider): LiteLLM's openai/ path, pointed at
# the simulator's OpenAI-compatible surface (/openai/v1). Unmetered: the plugin keeps no quota counters for them.
GEN_A, GEN_B = "openai/openai/gpt-oss-120b", "openai/openai/gpt-oss-20b"
MSG = [{"role": "user", "content": "hello"}]

def router_for(sim, redis_url, chain=DEMO_CHAIN, **settings):
    merged = {**FAST, **settings}
    return router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, chain=chain, **merged))


async def _ask(router, stream=False, max_tokens=16, messages=MSG):
    metadata: dict = {}
    start = time.monotonic()
    try:
        response = await router.acompletion(model=DEMO_GROUP, messages=messages, max_tokens=max_tokens,
                                            stream=stream, metadata=metadata)
        if stream:
            text = "".join([c.choices[0].delta.content or "" async for c in response if c.choices])
        else:
            text = response.choices[0].message.content
        return response, text, None, metadata.get("router_plugin", {}), time.monotonic() - start
    except Exception as exc:
        return None, None, exc, metadata.get("router_plugin", {}), time.monotonic() - start


def ask(router, **kw):
    return asyncio.run(_ask(router, **kw))


def plan_of(router, index):
    inst = installed(router)
    return inst, inst.plans.plan(all_deployments(router)[index])


async def until(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not predicate():
        await asyncio.sleep(0.05)
    return bool(predicate())


def wait_for(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not predicate():
        time.sleep(0.05)
    return predicate()


# ------------------------------------------------------------------------------------------------ time limits


@needs_108("per-attempt headers / first-token limit", "transport timeout per attempt only, no headers -> first-token switch")
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_silent_deployment_is_left_after_the_header_limit_not_retried(sim, redis_url, stream):
    sim.configure({"models": {bare(OR_A): {"latency_ms": 30_000}}})
    router = router_for(sim, redis_url)
    events = observe(router)
    _, text, error, info, elapsed = ask(router, stream=stream)
    assert error is None and text.startswith(f"sim reply from {bare(OR_B)}")
    assert (sent(sim, OR_A), sent(sim, OR_B)) == (1, 1)  # the silent one once, then the next at once
    assert info["model"] == OR_B and info["attempts"] == 2
    # stream: headers within connect_s (1 s); plain: the reply within connect_s + first_token_s (2.5 s)
    assert elapsed < (2.0 if stream else 3.5)
    assert events.fails == [(OR_A, "ServerError")]
    inst, plan = plan_of(router, 0)
    why = "no response headers within 1 s" if stream else "no reply within 2.5 s"
    assert why in inst.sync_store.peek(plan).why  # set aside for every worker


@needs_108("per-attempt headers / first-token limit", "transport timeout per attempt only, no headers -> first-token switch")
def test_stream_with_no_first_token_is_left_after_first_token_limit(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"stream_fault": "stall_first", "stall_s": 30}}})
    router = router_for(sim, redis_url)
    _, text, error, info, elapsed = ask(router, stream=True)
    assert error is None and text.startswith(f"sim reply from {bare(OR_B)}")
    assert (sent(sim, OR_A), sent(sim, OR_B)) == (1, 1)
    assert 1.0 <= elapsed < 3.0  # headers came at once; no token within first_token_s = 1.5 s
    inst, plan = plan_of(router, 0)
    assert "first token" in inst.sync_store.peek(plan).why


@pytest.mark.parametrize("primary", [GEN_A, GQ_A, OR_A], ids=["openai", "groq", "openrouter"])
def test_a_first_token_inside_first_token_s_is_awaited_on_every_provider_path(sim, redis_url, primary):
    # Headers at once, the first token after 1.4 s: past connect_s (1 s), inside first_token_s (2 s). LiteLLM's
    # openai/ path never logs "first stream response received": the limit must move on all the same.
    sim.configure({"models": {bare(primary): {"stream_fault": "slow_first", "stall_s": 1.4}}})
    router = router_for(sim, redis_url, chain=(primary, GQ_B), allow_paid=True,
                        timeouts={"connect_s": 1.0, "first_token_s": 2.0, "stream_idle_s": 1.0, "total_s": 10.0})
    _, text, error, info, _ = ask(router, stream=True)
    assert error is None and info["model"] == primary and info["attempts"] == 1  # answered by the primary
    assert text == whole(primary)
    assert (sent(sim, primary), sent(sim, GQ_B)) == (1, 0)


def test_sync_completion_leaves_a_silent_deployment_at_the_transport_limit(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"latency_ms": 30_000}}})
    router = router_for(sim, redis_url)
    metadata: dict = {}
    start = time.monotonic()
    response = router.completion(model=DEMO_GROUP, messages=MSG, max_tokens=8, metadata=metadata)
    assert response.model == bare(OR_B) and metadata["router_plugin"]["attempts"] == 2
    assert time.monotonic() - start < 4.0  # read limit connect_s + first_token_s = 2.5 s, not 30 s
    assert (sent(sim, OR_A), sent(sim, OR_B)) == (1, 1)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_whole_call_stays_inside_the_budget(sim, redis_url, stream):
    sim.configure({"models": {bare(m): {"latency_ms": 30_000} for m in DEMO_CHAIN}})
    router = router_for(sim, redis_url, timeouts={"connect_s": 1.0, "first_token_s": 1.5, "stream_idle_s": 1.0,
                                                  "total_s": 2.5})
    _, _, error, info, elapsed = ask(router, stream=stream)
    assert isinstance(error, BudgetExceededError), error
    assert "budget" in str(error) and bare(OR_A) in str(error)  # names what it tried
    assert elapsed < 4.0  # 2.5 s budget (+ scheduling), not 4 x 30 s
    assert 1 <= sum(sent(sim, m) for m in DEMO_CHAIN) <= 3


# ------------------------------------------------------------------------------------------------ retry discipline


def test_500_once_is_retried_on_the_same_deployment(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"status": 500, "status_count": 1}}})
    router = router_for(sim, redis_url)
    response, text, error, info, _ = ask(router)
    assert error is None and info["model"] == OR_A and info["attempts"] == 2
    assert (sent(sim, OR_A), sent(sim, OR_B)) == (2, 0)
    assert response.model == bare(OR_A)
    inst, plan = plan_of(router, 0)
    assert not hasattr(inst.sync_store.peek(plan), "why")  # one 500 sets nothing aside


def test_500_twice_fails_over_and_sets_the_deployment_aside(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"status": 500}}})
    router = router_for(sim, redis_url)
    _, _, error, info, _ = ask(router)
    assert error is None and info["model"] == OR_B and info["attempts"] == 3
    assert (sent(sim, OR_A), sent(sim, OR_B)) == (2, 1)
    inst, plan = plan_of(router, 0)
    assert wait_for(lambda: getattr(inst.sync_store.peek(plan), "counter", "x") is None)


def test_persistent_503_fails_over_without_retrying(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"status": 503}}})
    _, _, error, info, _ = ask(router_for(sim, redis_url))
    assert error is None and info["model"] == OR_B
    assert (sent(sim, OR_A), sent(sim, OR_B)) == (1, 1)


def test_503_everywhere_is_a_bounded_clear_error(sim, redis_url):
    sim.configure({"models": {bare(m): {"status": 503} for m in DEMO_CHAIN}})
    _, _, error, info, elapsed = ask(router_for(sim, redis_url))
    assert isinstance(error, ChainFailedError) and error.status_code == 503
    assert f"every deployment of '{DEMO_GROUP}' failed" in str(error)
    assert all(bare(m) in str(error) for m in DEMO_CHAIN)
    assert [sent(sim, m) for m in DEMO_CHAIN] == [1, 1, 1, 1] and info["attempts"] == 4
    assert elapsed < 3


BIG = 590  # max_tokens of a request that nearly fills the simulator's 600-token minute on its own


def _groq_tpm_429(sim):
    """The simulator's TPM bucket (600) is nearly full after one big request: the next one is answered 429 with a
    Retry-After of about 1.8 s (2 s), while the plugin's own counters (Groq's published 8000 TPM) let it through."""
    sim.configure({"groq": {"limits": {bare(GQ_B): {"tpm": 600}}}})


@needs_108("one-deployment group: 429 with a short Retry-After", "the 429 reaches the caller at once (RateLimitErrorRetries=0), no short wait")
def test_429_with_a_short_retry_after_is_waited_out_when_nothing_else_can_serve(sim, redis_url):
    _groq_tpm_429(sim)
    router = router_for(sim, redis_url, chain=(GQ_B,))
    first = ask(router, max_tokens=BIG)
    assert first[2] is None
    _, text, error, info, elapsed = ask(router, max_tokens=BIG)
    assert error is None and text.startswith("sim reply")
    assert sim.stats()["rate_limited"]["groq"] == 1 and sent(sim, GQ_B) == 3  # 1 + the 429 + the retry
    assert info["attempts"] == 2
    assert 1.0 < elapsed < 5  # waited for the reset (about 1.8 s), bounded


def test_429_fails_over_at_once_when_the_chain_has_another_deployment(sim, redis_url):
    _groq_tpm_429(sim)
    router = router_for(sim, redis_url, chain=(GQ_B, GQ_A))
    ask(router, max_tokens=BIG)
    _, _, error, info, elapsed = ask(router, max_tokens=BIG)
    assert error is None and info["model"] == GQ_A
    assert (sent(sim, GQ_B), sent(sim, GQ_A)) == (2, 1) and elapsed < 1.5  # no waiting for the ~1.8 s reset


@needs_108("one-deployment group: 429 with a long Retry-After", "LiteLLM's RateLimitError at once, not the plugin's QuotaExhaustedError")
def test_429_with_a_long_retry_after_is_refused_at_once(sim, redis_url):
    sim.configure({"groq": {"limits": {bare(GQ_B): {"rpm": 1}}}})  # the next request in 60 s
    router = router_for(sim, redis_url, chain=(GQ_B,))
    ask(router)
    _, _, error, _, elapsed = ask(router)
    assert isinstance(error, router_plugin.QuotaExhaustedError) and elapsed < 3  # not the 60 s
    assert 30 <= int(error.headers["retry-after"]) <= 61
    assert sent(sim, GQ_B) == 2


@pytest.mark.parametrize("model", [GEN_B, GQ_B], ids=["openai", "groq"])
def test_a_429_that_names_its_wait_cools_the_model_for_exactly_that_wait(sim, redis_url, model):
    # The upstream answers 429 with Retry-After: 2 (the simulator's tight token minute): the model is set aside for
    # those 2 s for every worker, not for cooldowns.busy_s (15 s). (A generic upstream: the model's cooldown; Groq:
    # its token-minute counter, blocked for the wait it stated.)
    _groq_tpm_429(sim)
    router = router_for(sim, redis_url, chain=(model, GQ_A), allow_paid=True)
    inst, plan = plan_of(router, 0)
    assert ask(router, max_tokens=BIG)[3]["model"] == model
    _, _, error, info, _ = ask(router, max_tokens=BIG)
    assert error is None and info["model"] == GQ_A and sim.stats()["rate_limited"]["groq"] == 1
    cooled = inst.sync_store.peek(plan)
    assert 0 < cooled.wait_s <= 2.0, cooled  # the provider's 2 s, not 15 s
    assert wait_for(lambda: not hasattr(inst.sync_store.peek(plan), "why"), timeout=4.0)  # and back after it
    assert ask(router, max_tokens=8)[3]["model"] == model


def test_context_length_400_goes_to_a_larger_context_deployment(sim, redis_url):
    # GQ_A claims 300k (overridden) but the simulator holds 131072: it answers 400 context_length_exceeded.
    # OR_B (claimed 250k) is no larger than what already failed: skipped unsent. Gemini (1M) takes it.
    prompt = [{"role": "user", "content": "word " * 112_000}]  # ~140k tokens for the simulator
    router = router_for(sim, redis_url, chain=(GQ_A, OR_B, GEMINI),
                        limits={GQ_A: {"context": 300_000, "tpm": 1_000_000, "tpd": 10_000_000},
                                OR_B: {"context": 250_000}})
    _, _, error, info, _ = ask(router, messages=prompt)
    assert error is None and info["model"] == GEMINI
    assert (sent(sim, GQ_A), sent(sim, OR_B), sent(sim, GEMINI)) == (1, 0, 1)


@pytest.mark.parametrize("model", [OR_A, GQ_A])
def test_http_200_with_an_error_body_is_a_failure_and_fails_over(sim, redis_url, model):
    sim.configure({"models": {bare(model): {"error_200": True}}})
    router = router_for(sim, redis_url, chain=(model, OR_B))
    metadata: dict = {}
    response = asyncio.run(router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=8, metadata=metadata))
    assert response.model == bare(OR_B) and (sent(sim, model), sent(sim, OR_B)) == (1, 1)
    failed = metadata["router_plugin_failed"]  # what LiteLLM 1.108 raised for the 200-with-error body
    expected = ("APIError", 502) if model == OR_A else ("APIConnectionError", 500)
    assert [(f["model"], f["type"], f["status"]) for f in failed] == [(model, *expected)]


def test_rejected_request_is_not_retried_and_carries_the_provider_reason(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"status": 400}}})  # a refusal of this request (content policy & co)
    _, _, error, _, _ = ask(router_for(sim, redis_url))
    assert isinstance(error, litellm.BadRequestError)
    assert "upstream returned HTTP 400" in str(error)  # the provider's own reason reaches the caller
    assert (sent(sim, OR_A), sent(sim, OR_B), sent(sim, GQ_A)) == (1, 0, 0)


# ------------------------------------------------------------------------------------------------ circuit


def test_circuit_opens_for_every_worker_probes_with_real_traffic_and_closes_on_success(sim, redis_url):
    settings = {"cooldowns": {"server_error_s": 1.0, "server_error_max_s": 8.0}}
    sim.configure({"models": {bare(OR_A): {"status": 502}}})
    worker_1 = router_for(sim, redis_url, **settings)
    worker_2 = router_for(sim, redis_url, **settings)  # another worker: its own install, the same Redis
    inst, plan = plan_of(worker_1, 0)

    async def scenario():  # one event loop: LiteLLM runs success callbacks in the background of the loop
        assert (await _ask(worker_1))[3]["model"] == OR_B
        assert await until(lambda: circuit.strikes(inst.sync_store, plan) == 1)
        assert (await _ask(worker_2))[3]["model"] == OR_B  # skipped by the other worker too
        assert sent(sim, OR_A) == 1
        await asyncio.sleep(1.2)
        assert sent(sim, OR_A) == 1  # nothing probes on its own, even after the cooldown

        sim.configure({"models": {bare(OR_A): {"status": None}}})  # it recovers
        _, _, error, info, _ = await _ask(worker_2)  # the next real request is the probe
        assert error is None and info["model"] == OR_A and sent(sim, OR_A) == 2
        assert await until(lambda: circuit.strikes(inst.sync_store, plan) == 0)  # closed: strikes cleared

        sim.configure({"models": {bare(OR_A): {"status": 502}}})  # fails again: the cooldown starts from the base
        assert (await _ask(worker_1))[3]["model"] == OR_B
        assert await until(lambda: circuit.strikes(inst.sync_store, plan) == 1)
        assert 0 < inst.sync_store.peek(plan).wait_s <= 1.0

    asyncio.run(scenario())


def test_an_unmetered_deployment_that_keeps_failing_is_set_aside_and_trusted_again_once_it_recovers(sim, redis_url):
    # A generic upstream has no quota counters (no reservation): its cooldown must be checked all the same.
    settings = {"cooldowns": {"server_error_s": 2.0, "server_error_max_s": 8.0}}
    sim.configure({"models": {bare(GEN_A): {"status": 503}}})
    router = router_for(sim, redis_url, chain=(GEN_A, GQ_B), allow_paid=True, **settings)
    inst, plan = plan_of(router, 0)

    async def scenario():
        for _ in range(10):  # 10 requests 0.5 s apart
            _, _, error, info, _ = await _ask(router)
            assert error is None and info["model"] == GQ_B
            await asyncio.sleep(0.5)
        assert 1 <= sent(sim, GEN_A) <= 2  # the first failure, at most one probe after the first cooldown
        assert circuit.strikes(inst.sync_store, plan) == sent(sim, GEN_A)

        sim.configure({"models": {bare(GEN_A): {"status": None}}})  # it recovers
        assert await until(lambda: not hasattr(inst.sync_store.peek(plan), "why"), timeout=9.0)
        _, _, error, info, _ = await _ask(router)  # the next real request is the probe
        assert error is None and info["model"] == GEN_A
        assert await until(lambda: circuit.strikes(inst.sync_store, plan) == 0)  # trusted again: strikes cleared
        assert (await _ask(router))[3]["model"] == GEN_A

    asyncio.run(scenario())


def test_sync_completion_skips_a_cooling_unmetered_deployment(sim, redis_url):
    router = router_for(sim, redis_url, chain=(GEN_A, GQ_B), allow_paid=True)
    inst, plan = plan_of(router, 0)
    inst.sync_store.cool(plan, "failing: HTTP 503 (another worker)", 30, 30)  # set aside by another worker
    models = [router.completion(model=DEMO_GROUP, messages=MSG, max_tokens=8).model for _ in range(3)]
    assert models == [bare(GQ_B)] * 3 and sent(sim, GEN_A) == 0  # the sync strategy reads the cooldown too


# ------------------------------------------------------------------------------------------------ generic upstreams


def test_a_generic_upstream_declared_free_is_served_without_allow_paid(sim, redis_url):
    config = demo_config(sim.base_url, redis_url=redis_url, chain=(GEN_A, GQ_B), **FAST)
    with pytest.raises(router_plugin.ConfigError) as refused:  # undeclared: refused as paid, the way out named
        router_plugin.build_router(config)
    assert "would cost money" in str(refused.value) and "model_info: {router_plugin: {free: true}}" in str(refused.value)

    config["model_list"][0]["model_info"] = {"router_plugin": {"free": True}}  # a self-hosted $0 server
    config["router_plugin"]["limits"] = {GEN_A: {"rpm": 2}}  # optional limits of its own
    router = router_plugin.build_router(config)
    assert [ask(router)[3]["model"] for _ in range(3)] == [GEN_A, GEN_A, GQ_B]  # its 2/min, then the next
    assert (sent(sim, GEN_A), sent(sim, GQ_B)) == (2, 1)


def test_a_model_without_a_provider_prefix_is_told_about_openai_compatible_servers(sim, redis_url):
    config = demo_config(sim.base_url, redis_url=redis_url, chain=(GQ_B,), **FAST)
    config["model_list"][0]["litellm_params"]["model"] = "my-vllm-model"
    with pytest.raises(router_plugin.ConfigError) as refused:
        router_plugin.build_router(config)
    assert "openai/<model>" in str(refused.value) and "api_base" in str(refused.value)


# ------------------------------------------------------------------------------------------------ accounting


def test_failed_attempts_count_as_attempts_never_as_completions(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"status": 503}}})
    router = router_for(sim, redis_url)
    events = observe(router)

    async def scenario():
        result = await _ask(router)
        await until(lambda: events.wins)
        return result

    response, _, error, info, _ = asyncio.run(scenario())
    assert error is None
    assert response.model == bare(OR_B) and response.usage.total_tokens > 0  # who answered, and its usage
    assert info["model"] == OR_B and info["attempts"] == 2
    assert events.routes == [OR_A, OR_B] and events.fails == [(OR_A, "ServerError")]
    assert events.wins == [OR_B]
    inst, plan = plan_of(router, 1)
    used = inst.sync_store.peek(plan, counters_only=True)
    assert used.remaining("minute").remaining == 20 - 2  # both attempts count against the account
