"""The same faults through the real LiteLLM proxy (``litellm --config ...`` as a subprocess, tests/proxy_harness.py)
with ``callbacks: router_plugin.proxy_handler``: a client over HTTP gets one complete answer or a clear error,
within the budget; the simulator counts the attempts per deployment.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx
import pytest
import yaml

from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config
from router_plugin.sim.wire import reply_pieces
from tests.proxy_harness import ProxyProcess, strong_master_key
from tests.support import bare, half, sent, whole

pytestmark = pytest.mark.integration

OR_A, OR_B, GQ_A, GQ_B = DEMO_CHAIN
GEMINI = "openrouter/google/gemini-2.0-flash-exp:free"
SOLO = "solo"  # a group of one deployment (GQ_B): nothing to fail over to
WIDE = "wide"  # GQ_A (claims 300k context), OR_B (claims 250k), Gemini (1M)
# Generic OpenAI-compatible upstreams (LiteLLM's openai/ path) on the simulator's /openai/v1, declared free.
GEN_A, GEN_B = "openai/openai/gpt-oss-120b", "openai/openai/gpt-oss-20b"
GENERIC = "generic"  # GEN_A, then GQ_B
PAIR = "generic-pair"  # GEN_A, then GEN_B
# Tight limits so that the budget test can spend the budget: a silent non-streamed attempt gets 0.8 + 1.2 s.
TIMEOUTS = {"connect_s": 0.8, "first_token_s": 1.2, "stream_idle_s": 0.8, "total_s": 3.5}


@pytest.fixture(scope="module")
def proxy(sim_server, redis_server, tmp_path_factory):
    config = demo_config(sim_server.base_url, redis_url=redis_server.url, timeouts=TIMEOUTS,
                         limits={GQ_A: {"context": 300_000, "tpm": 1_000_000, "tpd": 10_000_000},
                                 OR_B: {"context": 250_000}})
    extra = [(SOLO, GQ_B), (WIDE, GQ_A), (WIDE, OR_B), (WIDE, GEMINI), (GENERIC, GEN_A), (GENERIC, GQ_B),
             (PAIR, GEN_A), (PAIR, GEN_B)]
    for group, model in extra:
        base = next(d for d in demo_config(sim_server.base_url, chain=(model,))["model_list"])
        if model.startswith("openai/"):  # a $0 server: declared free, no allow_paid for the whole file
            base = {**base, "model_info": {"router_plugin": {"free": True}}}
        config["model_list"].append({**base, "model_name": group})
    config["litellm_settings"] = {"callbacks": "router_plugin.proxy_handler"}
    config["general_settings"] = {"master_key": "os.environ/LITELLM_MASTER_KEY"}
    path = tmp_path_factory.mktemp("proxy") / "litellm_config.yaml"
    path.write_text(yaml.safe_dump(config))
    key = strong_master_key()
    with ProxyProcess(path, workers=1, env={"LITELLM_MASTER_KEY": key}) as running:
        running.key = key
        call(running, stream=True)  # warm up: the first request installs the plugin in the worker
        yield running


@pytest.fixture
def fresh(sim, redis_url, proxy):
    """A reset simulator and a flushed Redis for each test (the proxy keeps running)."""
    return proxy


@dataclass
class Reply:
    status: int = 0
    headers: dict = field(default_factory=dict)
    text: str = ""
    finishes: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    done: bool = False
    body: dict = field(default_factory=dict)
    elapsed: float = 0.0


def call(proxy, stream: bool, group: str = DEMO_GROUP, max_tokens: int = 16, messages=None) -> Reply:
    payload = {"model": group, "messages": messages or [{"role": "user", "content": "hello"}],
               "max_tokens": max_tokens, "stream": stream}
    headers = {"Authorization": f"Bearer {proxy.key}"}
    reply = Reply()
    start = time.monotonic()
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=payload, headers=headers,
                      timeout=60) as r:
        reply.status, reply.headers = r.status_code, dict(r.headers)
        if not stream or r.status_code != 200:
            r.read()
            reply.body = r.json()
            choices = reply.body.get("choices") or []
            if choices:
                reply.text = choices[0]["message"]["content"]
                reply.finishes = [choices[0]["finish_reason"]]
            if "error" in reply.body:
                reply.errors.append(reply.body["error"])
        else:
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    reply.done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    reply.errors.append(event["error"])
                for choice in event.get("choices") or []:
                    reply.text += (choice.get("delta") or {}).get("content") or ""
                    if choice.get("finish_reason"):
                        reply.finishes.append(choice["finish_reason"])
    reply.elapsed = time.monotonic() - start
    return reply


# ------------------------------------------------------------------------------------------------ streams


@pytest.mark.parametrize("fault", ["cut", "truncate", "stall", "error_chunk"])
def test_broken_stream_is_continued_into_one_answer(sim, fresh, fault):
    sim.configure({"models": {bare(OR_A): {"stream_fault": fault, "stall_s": 30}}})
    reply = call(fresh, stream=True)
    assert reply.status == 200 and not reply.errors
    assert reply.text == whole(OR_A)  # A's partial, then B continuing it word for word
    assert reply.finishes == ["stop"] and reply.done
    assert (sent(sim, OR_A), sent(sim, OR_B), sent(sim, GQ_A), sent(sim, GQ_B)) == (1, 1, 0, 0)
    assert reply.elapsed < 3.5  # within the budget; a 30 s stall cut at stream_idle_s


def test_stream_nobody_can_continue_ends_with_an_error_naming_the_original_failure(sim, fresh):
    # OR_A, OR_B gone (404, quarantined), GQ_A breaks off mid-answer, GQ_B rejects the continuation both ways
    # (with a prefill, and without one).
    sim.configure({"models": {bare(GQ_A): {"stream_fault": "cut"}, bare(GQ_B): {"reject_prefill": True, "status": 400},
                              bare(OR_A): {"gone": True}, bare(OR_B): {"gone": True}}})
    reply = call(fresh, stream=True)
    assert reply.status == 200 and reply.text == half(GQ_A)
    assert reply.finishes == [] and not reply.done  # never an orderly end of a truncated answer
    assert len(reply.errors) == 1
    message = reply.errors[0]["message"]
    assert "groq/openai/gpt-oss-120b broke off" in message and "APIConnectionError" in message
    assert "prefill" not in message
    assert [sent(sim, m) for m in DEMO_CHAIN] == [1, 1, 1, 2]


def test_stream_without_first_token_fails_over_at_the_first_token_limit(sim, fresh):
    sim.configure({"models": {bare(OR_A): {"stream_fault": "stall_first", "stall_s": 30}}})
    reply = call(fresh, stream=True)
    assert reply.status == 200 and reply.text == "".join(reply_pieces(bare(OR_B), 16))
    assert (sent(sim, OR_A), sent(sim, OR_B)) == (1, 1) and reply.elapsed < 3


@pytest.mark.parametrize("fault", ["malformed", "no_done"])
def test_orderly_faults_give_the_whole_answer(sim, fresh, fault):
    sim.configure({"models": {bare(OR_A): {"stream_fault": fault}}})
    reply = call(fresh, stream=True)
    assert reply.status == 200 and reply.text == "".join(reply_pieces(bare(OR_A), 16))
    assert reply.finishes == ["stop"] and not reply.errors and reply.elapsed < 3
    assert sent(sim, OR_A) == 1 and sent(sim, OR_B) == 0


# ------------------------------------------------------------------------------------------------ time limits


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_silent_deployment_is_left_at_once(sim, fresh, stream):
    sim.configure({"models": {bare(OR_A): {"latency_ms": 30_000}}})
    reply = call(fresh, stream=stream)
    assert reply.status == 200 and reply.text.startswith(f"sim reply from {bare(OR_B)}")
    assert (sent(sim, OR_A), sent(sim, OR_B)) == (1, 1)
    assert reply.elapsed < 3.5
    assert reply.headers["x-router-plugin-deployment"] == OR_B and reply.headers["x-router-plugin-attempts"] == "2"


def test_budget_ends_the_call_with_a_timeout(sim, fresh):
    sim.configure({"models": {bare(m): {"latency_ms": 30_000} for m in DEMO_CHAIN}})
    reply = call(fresh, stream=False)
    assert reply.status == 408, reply.body
    assert "budget" in reply.errors[0]["message"] and bare(OR_A) in reply.errors[0]["message"]
    assert reply.elapsed < 5.5  # 3.5 s budget, not 4 x 30 s
    assert (sent(sim, OR_A), sent(sim, OR_B), sent(sim, GQ_A)) == (1, 1, 0)


# ------------------------------------------------------------------------------------------------ retry discipline


def test_500_once_is_retried_on_the_same_deployment(sim, fresh):
    sim.configure({"models": {bare(OR_A): {"status": 500, "status_count": 1}}})
    reply = call(fresh, stream=False)
    assert reply.status == 200 and reply.text.startswith(f"sim reply from {bare(OR_A)}")
    assert (sent(sim, OR_A), sent(sim, OR_B)) == (2, 0)
    assert reply.headers["x-router-plugin-attempts"] == "2"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_503_everywhere_is_a_clear_503_after_one_attempt_each(sim, fresh, stream):
    sim.configure({"models": {bare(m): {"status": 503} for m in DEMO_CHAIN}})
    reply = call(fresh, stream=stream)
    assert reply.status == 503
    assert f"every deployment of '{DEMO_GROUP}' failed" in reply.errors[0]["message"]
    assert [sent(sim, m) for m in DEMO_CHAIN] == [1, 1, 1, 1] and reply.elapsed < 3


def test_http_200_error_body_fails_over(sim, fresh):
    sim.configure({"models": {bare(OR_A): {"error_200": True}}})
    reply = call(fresh, stream=False)
    assert reply.status == 200 and reply.text.startswith(f"sim reply from {bare(OR_B)}")
    assert (sent(sim, OR_A), sent(sim, OR_B)) == (1, 1)


def test_429_short_retry_after_is_waited_out_on_a_single_deployment(sim, fresh):
    sim.configure({"groq": {"limits": {bare(GQ_B): {"tpm": 600}}}})  # see test_timeouts._groq_tpm_429
    assert call(fresh, stream=False, group=SOLO, max_tokens=590).status == 200
    reply = call(fresh, stream=False, group=SOLO, max_tokens=590)
    assert reply.status == 200 and sent(sim, GQ_B) == 3 and sim.stats()["rate_limited"]["groq"] == 1
    assert 1.0 < reply.elapsed < 3.5  # waited for the ~1.8 s reset, inside the 3.5 s budget


def test_context_400_goes_to_a_larger_context_deployment(sim, fresh):
    prompt = [{"role": "user", "content": "word " * 112_000}]
    reply = call(fresh, stream=False, group=WIDE, messages=prompt)
    assert reply.status == 200 and reply.text.startswith(f"sim reply from {bare(GEMINI)}")
    assert (sent(sim, GQ_A), sent(sim, OR_B), sent(sim, GEMINI)) == (1, 0, 1)


def test_rejected_request_is_not_retried_and_keeps_the_provider_reason(sim, fresh):
    sim.configure({"models": {bare(OR_A): {"status": 400}}})
    reply = call(fresh, stream=False)
    assert reply.status == 400 and "upstream returned HTTP 400" in reply.errors[0]["message"]
    assert (sent(sim, OR_A), sent(sim, OR_B)) == (1, 0)


# ------------------------------------------------------------------------------------------------ generic upstreams


def events_of(proxy, payload: dict) -> list[dict]:
    """The parsed SSE events of a streamed proxy reply (``[DONE]`` left out)."""
    events = []
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json={**payload, "stream": True},
                      headers={"Authorization": f"Bearer {proxy.key}"}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line[6:] != "[DONE]":
                events.append(json.loads(line[6:]))
    return events


def test_openai_path_first_token_inside_first_token_s_is_awaited(sim, fresh):
    # Headers at once, the first token after 1.0 s: past connect_s (0.8 s), inside first_token_s (1.2 s).
    sim.configure({"models": {bare(GEN_A): {"stream_fault": "slow_first", "stall_s": 1.0}}})
    reply = call(fresh, stream=True, group=GENERIC)
    assert reply.status == 200 and not reply.errors and reply.text == whole(GEN_A)
    assert (sent(sim, GEN_A), sent(sim, GQ_B)) == (1, 0)


@pytest.mark.parametrize("fault", ["malformed", "malformed_list"], ids=["not-json", "json-list"])
def test_openai_path_malformed_event_is_skipped(sim, fresh, fault):
    sim.configure({"models": {bare(GEN_A): {"stream_fault": fault}}})
    reply = call(fresh, stream=True, group=GENERIC)
    assert reply.status == 200 and not reply.errors and reply.text == whole(GEN_A) and reply.finishes == ["stop"]
    assert (sent(sim, GEN_A), sent(sim, GQ_B)) == (1, 0)


def test_openai_path_fallback_that_refuses_a_prefill_still_ends_one_answer(sim, fresh):
    sim.configure({"models": {bare(GEN_A): {"stream_fault": "cut"}, bare(GEN_B): {"reject_prefill": True}}})
    reply = call(fresh, stream=True, group=PAIR)
    assert reply.status == 200 and not reply.errors
    assert reply.text == whole(GEN_A) and reply.finishes == ["stop"] and reply.done
    assert (sent(sim, GEN_A), sent(sim, GEN_B)) == (1, 2)


@pytest.mark.parametrize("group,model", [(GENERIC, GEN_A), (SOLO, GQ_B), (DEMO_GROUP, OR_A)],
                         ids=["openai", "groq", "openrouter"])
def test_tools_json_and_n_pass_through_the_proxy_stream(sim, fresh, group, model):
    base = {"model": group, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 64}
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "get_weather", "parameters": {
                 "type": "object", "properties": {"city": {"type": "string"}}}}}]
    events = events_of(fresh, {**base, "tools": tools,
                               "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    calls = [c for e in events for ch in e.get("choices") or [] for c in (ch.get("delta") or {}).get("tool_calls") or []]
    assert len(calls) > 2 and calls[0]["function"]["name"] == "get_weather"  # streamed tool-call deltas
    assert json.loads("".join(c["function"].get("arguments") or "" for c in calls)) == {"city": "sim"}
    assert [ch["finish_reason"] for e in events for ch in e.get("choices") or [] if ch.get("finish_reason")] \
        == ["tool_calls"]

    events = events_of(fresh, {**base, "response_format": {"type": "json_object"}, "max_tokens": 16})
    text = "".join((ch.get("delta") or {}).get("content") or "" for e in events for ch in e.get("choices") or [])
    assert json.loads(text) == {"answer": whole(model)}

    events = events_of(fresh, {**base, "n": 2, "max_tokens": 16})
    texts: dict = {}
    for e in events:
        for ch in e.get("choices") or []:
            texts[ch["index"]] = texts.get(ch["index"], "") + ((ch.get("delta") or {}).get("content") or "")
    assert texts == {0: whole(model), 1: whole(model)}
