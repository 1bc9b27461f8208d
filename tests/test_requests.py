"""Hostile requests cost nothing (issue 11: items 1, 2, 5, 7).

A malformed request, a request that can never fit, and an upstream that echoes the key: a real LiteLLM Router,
a real redis-server, the simulator (and, for the echo, a hostile upstream of our own) on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

import litellm
import pytest
import redis
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import router_plugin
from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config
from router_plugin.adapter.installer import installed
from tests.fake_keys import groq_key, openrouter_key
from tests.support import sent
from router_plugin.adapter.router_api import all_deployments

OR_A, OR_B, GQ_A, GQ_B = DEMO_CHAIN
MSG = [{"role": "user", "content": "hello"}]


# ---------------------------------------------------------------------------------------------- helpers


def counters(redis_url: str) -> dict[str, float]:
    """Every counter the plugin holds in Redis: key -> used."""
    client = redis.Redis.from_url(redis_url)
    out = {}
    for key in client.scan_iter("*:c:*"):
        used = client.hget(key, "used")
        out[key.decode()] = float(used or 0)
    return out


def set_aside(redis_url: str) -> list[str]:
    """Models the plugin has set aside (cooled, quarantined) for every worker."""
    return sorted(k.decode() for k in redis.Redis.from_url(redis_url).scan_iter("*:model:*"))


def minute_used(redis_url: str) -> float:
    return sum(v for k, v in counters(redis_url).items() if k.endswith(":c:minute"))


def settled(redis_url: str, want, timeout_s: float = 5.0):
    """Poll until ``want(counters)`` holds (the failure callback refunds after the caller has its error)."""
    end = time.monotonic() + timeout_s
    while True:
        now = counters(redis_url)
        if want(now) or time.monotonic() > end:
            return now
        time.sleep(0.05)


async def call(router, **kw):
    metadata: dict = {}
    kw.setdefault("messages", MSG)
    kw.setdefault("max_tokens", 16)
    try:
        response = await router.acompletion(model=DEMO_GROUP, metadata=metadata, **kw)
        return response, metadata.get("router_plugin", {})
    except Exception as exc:
        exc.router_state = metadata.get("router_plugin", {})  # type: ignore[attr-defined]
        raise


# ------------------------------------------------------------------------------------- 1. malformed requests

MALFORMED = [
    {"messages": "hi"},
    {"messages": ["hi"]},
    {"messages": []},
    {"messages": [{"foo": 1}]},
    {"messages": [{"role": "user"}]},
    {"messages": [{"role": "wizard", "content": "hi"}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"max_tokens": "lots"},
    {"max_tokens": -3},
    {"max_tokens": 2.5},
    {"n": 0},
    {"tools": "all of them"},
    {"response_format": "json"},
]


@pytest.mark.integration
@pytest.mark.parametrize("bad", MALFORMED, ids=[json.dumps(b)[:40] for b in MALFORMED])
def test_malformed_request_is_a_400_that_costs_nothing(sim, redis_url, bad):
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url))
    with pytest.raises(litellm.BadRequestError) as err:
        asyncio.run(call(router, **bad))
    assert err.value.status_code == 400
    assert "bad request" in str(err.value) and "router_plugin" in str(err.value)
    assert not isinstance(err.value, litellm.RateLimitError)
    assert all(v == 0 for v in counters(redis_url).values())
    assert set_aside(redis_url) == []
    assert sum(sim.stats()["requests"]["openrouter"].values()) == sum(sim.stats()["requests"]["groq"].values()) == 0


def test_shape_check_accepts_every_valid_chat_shape():
    from pydantic import BaseModel

    from router_plugin.request_shape import problem

    class Answer(BaseModel):
        text: str

    valid_messages = [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                      {"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": "call it"},
         {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                                "function": {"name": "f", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "1", "content": "42"}],
        [{"role": "developer", "content": "x"}, {"role": "user", "content": ""}],
        [{"role": "user", "content": ["a text-completion prompt", "batch"]}],  # Router.atext_completion's shape
        [{"role": "user", "content": "hi"}, litellm.Message(role="assistant", content="hello"),  # a reply passed back
         {"role": "user", "content": "and?"}],
    ]
    for messages in valid_messages:
        assert problem(messages, {}) is None, messages
    for request in ({"max_tokens": 1, "n": 2, "max_completion_tokens": None}, {"tools": [{"type": "function"}]},
                    {"response_format": {"type": "json_object"}}, {"response_format": Answer}, {"tools": None}):
        assert problem(MSG, request) is None, request
    assert problem(None, {"input": ["embed me"]}, chat=False) is None
    assert problem(None, {"max_tokens": "x"}, chat=False) is not None


@pytest.mark.integration
def test_three_malformed_requests_then_a_valid_one_served_first_in_one_attempt(sim, redis_url):
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url))
    for bad in ({"messages": "hi"}, {"messages": [{"foo": 1}]}, {"max_tokens": "lots"}):
        with pytest.raises(litellm.BadRequestError):
            asyncio.run(call(router, **bad))
    _, info = asyncio.run(call(router))
    assert info["model"] == OR_A and info["attempts"] == 1
    assert minute_used(redis_url) == 1
    assert set_aside(redis_url) == []
    assert sent(sim, OR_A) == 1


@pytest.mark.integration
def test_request_litellm_rejects_before_sending_is_refunded_and_not_retried(sim, redis_url):
    # A shape the plugin's own check does not know (tool_choice=5): LiteLLM raises before the HTTP call.
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url))
    with pytest.raises(litellm.BadRequestError) as err:
        asyncio.run(call(router, tool_choice=5))
    assert err.value.status_code == 400 and "tool_choice" in str(err.value)
    assert getattr(err.value, "router_state", {}).get("attempts") == 1  # not tried on the other deployments
    left = settled(redis_url, lambda c: all(v == 0 for v in c.values()))
    assert all(v == 0 for v in left.values()), left  # the request counters too: it never left
    assert set_aside(redis_url) == []
    _, info = asyncio.run(call(router))
    assert info["model"] == OR_A and info["attempts"] == 1
    assert minute_used(redis_url) == 1


# ------------------------------------------------------------------------------------- 2. never fits


@pytest.mark.integration
@pytest.mark.parametrize("kw", [{"messages": [{"role": "user", "content": "x" * 1_200_000}]},
                                {"max_tokens": 10**12}], ids=["1.2M-prompt", "max_tokens-1e12"])
def test_request_larger_than_every_context_window_is_a_400_naming_the_limit(sim, redis_url, kw):
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url))
    kw = {"max_tokens": 16, **kw}
    with pytest.raises(litellm.BadRequestError) as err:
        asyncio.run(call(router, **kw))
    text = str(err.value)
    assert err.value.status_code == 400 and not isinstance(err.value, litellm.RateLimitError)
    inst = installed(router)
    largest = max(inst.plans.plan(d).context_window for d in all_deployments(router))  # qwen3-coder:free, 262,144
    assert f"the largest context window in 'free-chat' is {largest:,}" in text and "request needs ~" in text
    assert all(v == 0 for v in counters(redis_url).values())


@pytest.mark.integration
def test_request_larger_than_a_whole_token_limit_is_a_400_naming_it(sim, redis_url):
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, chain=(GQ_A, GQ_B)))
    with pytest.raises(litellm.BadRequestError) as err:
        asyncio.run(call(router, max_tokens=20_000))  # fits the context window, never Groq's 8,000 tokens/min
    assert "tokens/min is 8,000" in str(err.value)


@pytest.mark.integration
def test_prompt_every_deployment_rejects_as_too_long_is_a_400(sim, redis_url):
    # GQ_A claims 300k (overridden) but the simulator holds 131,072: it answers 400 context_length_exceeded; OR_B
    # (claimed 250k) is no larger than what already failed. Nothing is left that could ever take it.
    config = demo_config(sim.base_url, redis_url=redis_url, chain=(GQ_A, OR_B),
                         limits={GQ_A: {"context": 300_000, "tpm": 1_000_000, "tpd": 10_000_000},
                                 OR_B: {"context": 250_000}})
    router = router_plugin.build_router(config)
    with pytest.raises(litellm.BadRequestError) as err:
        asyncio.run(call(router, messages=[{"role": "user", "content": "word " * 112_000}]))
    assert err.value.status_code == 400 and "exceeds its context window" in str(err.value)
    assert (sent(sim, GQ_A), sent(sim, OR_B)) == (1, 0)
    assert set_aside(redis_url) == []


@pytest.mark.integration
def test_request_only_a_quota_blocked_deployment_could_take_stays_a_429(sim, redis_url):
    # ~105k tokens: too large for every window but OR_B's (262,144); the OpenRouter pool is spent for this minute.
    config = demo_config(sim.base_url, redis_url=redis_url, limits={"openrouter": {"rpm": 1}})
    router = router_plugin.build_router(config)
    asyncio.run(call(router))
    with pytest.raises(router_plugin.QuotaExhaustedError) as err:
        asyncio.run(call(router, messages=[{"role": "user", "content": "x" * 420_000}]))
    assert err.value.status_code == 429


# ------------------------------------------------------------------------------------- 5. the estimate


def test_estimate_counts_tools_response_format_and_n():
    from router_plugin.limits import estimate_prompt_tokens, requested_max_tokens

    plain = estimate_prompt_tokens(MSG, {"max_tokens": 100})
    tools = [{"type": "function", "function": {"name": f"f{i}", "description": "d" * 600,
                                               "parameters": {"type": "object"}}} for i in range(100)]
    chars = len(json.dumps(tools, separators=(",", ":")))
    assert estimate_prompt_tokens(MSG, {"tools": tools}) >= plain + chars // 4
    assert estimate_prompt_tokens(MSG, {"functions": [t["function"] for t in tools]}) >= plain + chars // 5
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"description": "y" * 30_000}}}
    assert estimate_prompt_tokens(MSG, {"response_format": schema}) >= plain + 30_000 // 4
    assert estimate_prompt_tokens(MSG, {"response_format": {"type": "json_object"}}) < plain + 16
    assert requested_max_tokens({"max_tokens": 100, "n": 3}, 1024) == 300
    assert requested_max_tokens({"n": 2}, 1024) == 2048
    assert requested_max_tokens({"max_tokens": 100, "n": None}, 1024) == 100
    assert estimate_prompt_tokens("hi") > 0 and estimate_prompt_tokens(None) == 0


@pytest.mark.integration
def test_tools_schema_and_n_are_reserved(sim, redis_url):
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url))
    tools = [{"type": "function", "function": {"name": f"f{i}", "description": "d" * 600,
                                               "parameters": {"type": "object"}}} for i in range(100)]
    _, plain = asyncio.run(call(router, max_tokens=100))
    _, with_tools = asyncio.run(call(router, max_tokens=100, tools=tools))
    _, three = asyncio.run(call(router, max_tokens=100, n=3))
    assert plain["tokens"] < 120
    assert with_tools["tokens"] >= plain["tokens"] + len(json.dumps(tools, separators=(",", ":"))) // 4
    assert three["tokens"] >= 300


# ------------------------------------------------------------------------------------- 7. echoed keys


def test_scrub_removes_key_shapes_and_configured_keys():
    from router_plugin.redact import remember, scrub

    plain = "plain-configured-secret-" + "7f3a"
    remember([plain, "os.environ/X", None, "short"])
    text = (f"Authorization: Bearer {groq_key('echoed-1')}, key {openrouter_key('v1-abc')}, "
            f"{groq_key('x')} sk-" + "a" * 20 + f" and {plain} and cut {plain[:14]}")
    out = scrub(text)
    for secret in (groq_key("echoed-1"), openrouter_key("v1-abc"), plain, plain[:14], "sk-" + "a" * 20):
        assert secret not in out
    assert out.count("[redacted]") >= 5 and "Authorization:" in out
    assert scrub("nothing secret: short words stay") == "nothing secret: short words stay"
    assert scrub(object.__new__(_Unprintable)) == "(unprintable)"


class _Unprintable:
    def __str__(self):
        raise ValueError("no")


class Hostile:
    """An upstream on 127.0.0.1 that answers every chat request 500 with what it was sent echoed back."""

    def __init__(self, status: int = 500):
        self.status = status
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handler(self, request):
        body = {"error": {"message": f"upstream failure; you sent Authorization: {request.headers.get('Authorization')}"
                                     f" (key {request.headers.get('Authorization', '').split(' ')[-1]})",
                          "type": "server_error"}}
        if self.status == 400:
            body["error"]["type"] = "invalid_request_error"
        return web.json_response(body, status=self.status)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/openai/v1/chat/completions", self._handler)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._loop.run_until_complete(web.SockSite(self._runner, sock).start())
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self):
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.mark.integration
@pytest.mark.parametrize("status", [500, 400])
@pytest.mark.parametrize("key", [groq_key("hostile-echo-key"), "plain-secret-without-a-key-shape-42"],
                         ids=["gsk-key", "plain-key"])
def test_a_key_echoed_by_the_upstream_appears_in_nothing_the_plugin_writes(redis_url, caplog, key, status):
    with Hostile(status) as upstream:
        base = f"http://127.0.0.1:{upstream.port}/openai/v1"
        config = {"model_list": [{"model_name": DEMO_GROUP, "litellm_params": {"model": m, "api_key": key,
                                                                                "api_base": base}}
                                 for m in (GQ_A, GQ_B)],
                  "router_plugin": {"redis_url": redis_url}}
        router = router_plugin.build_router(config)
        with caplog.at_level(logging.INFO, logger="router_plugin"):
            with pytest.raises(Exception) as err:
                asyncio.run(call(router))
    # the echo was there, and was scrubbed: in the routing log (500: the chain walked on) or the caller's error (400)
    assert "[redacted]" in (caplog.text if status == 500 else str(err.value))
    assert isinstance(err.value, litellm.BadRequestError if status == 400 else litellm.ServiceUnavailableError)
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records if r.name == "router_plugin")
    assert key not in logged
    assert key not in str(err.value) and key not in repr(err.value.args)
    store = redis.Redis.from_url(redis_url)
    for k in store.scan_iter("*"):
        assert key.encode() not in k
        if store.type(k) == b"hash":
            assert not any(key.encode() in v for v in store.hgetall(k).values())
    assert installed(router) is not None


# ------------------------------------------------------------------------------------- fuzzing request shapes

_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, allow_infinity=False),
                  st.text(max_size=6), st.lists(st.integers(0, 2), max_size=2),
                  st.dictionaries(st.sampled_from(["role", "content", "type", "x"]), st.text(max_size=4),
                                  max_size=2))
_MESSAGE = st.one_of(_JUNK, st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["user", "system", "x"]), _JUNK)},
                                                  optional={"content": st.one_of(st.text(max_size=8), _JUNK)}))
#: Every OpenAI chat field a caller may send (``stream`` and ``metadata`` aside: they change how the call is made).
_FIELDS = ["max_tokens", "max_completion_tokens", "n", "tools", "functions", "response_format", "tool_choice",
           "temperature", "stop", "top_p", "seed", "logprobs", "top_logprobs", "presence_penalty",
           "frequency_penalty", "logit_bias", "user", "parallel_tool_calls", "stream_options", "reasoning_effort"]
_REQUEST = st.one_of(
    st.fixed_dictionaries({"messages": st.one_of(_JUNK, st.lists(_MESSAGE, max_size=3))}),  # junk messages
    st.builds(lambda name, value: {"messages": MSG, name: value}, st.sampled_from(_FIELDS), _JUNK),  # one junk field
    st.fixed_dictionaries({"messages": st.lists(_MESSAGE, min_size=1, max_size=2)},
                          optional={name: _JUNK for name in _FIELDS}),  # anything at once
)


@pytest.mark.integration
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=_REQUEST)
def test_fuzzed_request_shapes_never_set_aside_and_only_charge_what_was_sent(sim_server, redis_server, request):
    """Whatever the request: a 400 or an answer, never a 429/503; no deployment set aside; at most one attempt;
    counters charged only for what reached a provider (a provider's own 400 stays counted: providers count it)."""
    sim_server.reset()
    redis_server.client().flushall()
    router = router_plugin.build_router(demo_config(sim_server.base_url, redis_url=redis_server.url))
    try:
        _, info = asyncio.run(call(router, **request))
        assert info["attempts"] == 1
        event("served")
    except litellm.BadRequestError as exc:
        assert exc.status_code == 400
        attempts = getattr(exc, "router_state", {}).get("attempts", 0)
        assert attempts <= 1
        event(f"400 after {attempts} attempt(s)")
    stats = sim_server.stats()["requests"]
    reached = sum(stats["openrouter"].values()) + sum(stats["groq"].values())
    assert reached <= 1
    left = settled(redis_server.url, lambda c: sum(v for k, v in c.items() if k.endswith((":minute", ":rpm")))
                   <= reached)
    assert sum(v for k, v in left.items() if k.endswith((":minute", ":rpm"))) <= reached, (request, left)
    assert set_aside(redis_server.url) == []


# ------------------------------------------------------------------------------------- through the proxy


@pytest.mark.integration
def test_through_the_proxy_a_bad_request_is_a_400_without_retry_after_and_no_attempt(sim, redis_url):
    from tests.proxy_harness import ProxyProcess, strong_master_key

    key = strong_master_key()
    env = {"LITELLM_MASTER_KEY": key, "REDIS_URL": redis_url, "SIM_OPENROUTER_BASE": sim.openrouter_base,
           "SIM_GROQ_BASE": sim.groq_base}
    with ProxyProcess("configs/litellm_config.offline.yaml", workers=1, env=env) as proxy:
        def post(**body):
            import httpx

            return httpx.post(proxy.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": DEMO_GROUP, "max_tokens": 16, **body}, timeout=60)

        for body in ({"messages": "hi"}, {"messages": MSG, "max_tokens": "lots"},
                     {"messages": [{"role": "user", "content": "x" * 1_200_000}]},
                     {"messages": MSG, "max_tokens": 10**12}):
            reply = post(**body)
            assert reply.status_code == 400, reply.text[:300]
            assert "retry-after" not in reply.headers
            assert reply.headers["x-router-plugin-attempts"] == "0"
        reply = post(messages=MSG)
        assert reply.status_code == 200
        assert reply.headers["x-router-plugin-deployment"] == OR_A and reply.headers["x-router-plugin-attempts"] == "1"
    assert minute_used(redis_url) == 1 and set_aside(redis_url) == []
