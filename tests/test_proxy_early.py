"""Refusals decided in the proxy handler's pre-call hook, before LiteLLM's Router (issue 18 item 3).

For each kind of refusal -- out of quota (429), every deployment cooling down (503), a malformed request (400) --
the pre-call hook raises the very exception the Router used to raise (type, status, message with the Router's own
note, headers the proxy sends), the request costs no quota and is decided once (not retried), and the Router --
its fallback/retry wrappers and failure alerts -- is never entered. A request that can be served gets its
deployment chosen in the hook and the Router's first pick takes it (one walk, one reservation); a pick whose
request fails before the Router takes it is given back.

In-process: a real ``litellm.Router`` built from the config, a real redis-server and the simulator; the proxy hooks
are called the way ``litellm.proxy`` calls them (tests/test_proxy_paths.py runs the real proxy).
"""

from __future__ import annotations

import asyncio
import re

import litellm
import pytest

import router_plugin
from router_plugin.adapter.proxy import EARLY_KEY, ProxyHandler

SOLO, DOWN, OTHER = "solo", "down", "other"
OR_MODEL = "openrouter/meta-llama/llama-3.3-70b-instruct:free"
GQ_MODEL = "groq/openai/gpt-oss-20b"


def _config(sim, redis_url: str) -> dict:
    return {
        "model_list": [
            {"model_name": SOLO, "litellm_params": {"model": OR_MODEL, "api_key": "sim-openrouter-key",
                                                    "api_base": sim.openrouter_base}},
            {"model_name": DOWN, "litellm_params": {"model": GQ_MODEL, "api_key": "sim-groq-key",
                                                    "api_base": sim.groq_base}},
            {"model_name": OTHER, "litellm_params": {"model": GQ_MODEL, "api_key": "sim-groq-key",
                                                     "api_base": sim.groq_base}},
        ],
        "router_plugin": {"redis_url": redis_url, "limits": {"openrouter": {"rpm": 1}}},
    }


def _data(model: str, messages=None) -> dict:
    """The request as the proxy hands it to the pre-call hook (the fields the plugin reads, and a few it must not)."""
    return {"model": model, "messages": messages or [{"role": "user", "content": "hello"}], "max_tokens": 16,
            "metadata": {"headers": {}, "user_api_key_hash": "hashed", "endpoint": "/v1/chat/completions"},
            "litellm_call_id": "call-1", "proxy_server_request": {"url": "/v1/chat/completions"}}


class Counting:
    """Counts the Router's fallback wrapper and the strategy's walks."""

    def __init__(self, monkeypatch, router, installed):
        self.fallback_calls = 0
        self.walks = 0
        self.reservations = 0
        inner = router.async_function_with_fallbacks

        async def with_fallbacks(*args, **kwargs):
            self.fallback_calls += 1
            return await inner(*args, **kwargs)

        monkeypatch.setattr(router, "async_function_with_fallbacks", with_fallbacks)
        walk = installed.strategy.async_get_available_deployment.__func__

        async def counted_walk(strategy, *args, **kwargs):
            self.walks += 1
            return await walk(strategy, *args, **kwargs)

        monkeypatch.setattr(type(installed.strategy), "async_get_available_deployment", counted_walk)
        for name in ("reserve", "reserve_first"):  # one call per deployment walked, or one per walk (issue 18 item 1)
            if hasattr(installed.store, name):
                monkeypatch.setattr(installed.store, name, self._counted(getattr(installed.store, name)))

    def _counted(self, reserve):
        async def counted_reserve(*args, **kwargs):
            self.reservations += 1
            return await reserve(*args, **kwargs)

        return counted_reserve


@pytest.fixture(params=["no fallbacks", "fallbacks for another group"])
def proxy(request, monkeypatch, sim, redis_url):
    monkeypatch.setattr(litellm, "callbacks", [])
    config = _config(sim, redis_url)
    fallbacks = [{OTHER: [SOLO]}] if request.param != "no fallbacks" else None
    router = litellm.Router(model_list=config["model_list"], fallbacks=fallbacks)
    handler = ProxyHandler(settings=router_plugin.load_config(config).settings)
    installed = handler.ensure_installed(router)
    return handler, router, installed


async def _old_path(handler, router, data: dict) -> Exception:
    """What the proxy did before: the Router decides and raises."""
    handler.ensure_installed(router)
    kwargs = {k: v for k, v in data.items() if k not in ("proxy_server_request", "litellm_call_id")}
    with pytest.raises(Exception) as caught:
        await router.acompletion(**kwargs)
    return caught.value


async def _proxy_headers(handler, data: dict, exc: Exception) -> dict:
    """The headers the proxy sends with a failure: the exception's own, then the handler's hooks (as
    litellm/proxy/common_request_processing.py ``handle_llm_api_exception`` calls them)."""
    await handler.async_post_call_failure_hook(data, exc, None)
    headers = dict(getattr(exc, "headers", None) or {})
    headers.update(await handler.async_post_call_response_headers_hook(data, None, None))
    return headers


def _same_text(text: str) -> str:
    return re.sub(r"\d+", "N", text)  # a reset time or "in 59s" may tick between the two paths


def _fill_solo(handler, router) -> None:
    async def one():
        handler.ensure_installed(router)
        await router.acompletion(model=SOLO, messages=[{"role": "user", "content": "first"}], max_tokens=16)

    asyncio.run(one())  # rpm 1: the pool is now out of quota for the minute


def _cool_down(handler, router, sim) -> None:
    sim.configure({"models": {GQ_MODEL.split("/", 1)[1]: {"status": 503, "status_count": 1000}}})

    async def one():
        handler.ensure_installed(router)
        with pytest.raises(Exception):
            await router.acompletion(model=DOWN, messages=[{"role": "user", "content": "first"}], max_tokens=16)

    asyncio.run(one())


@pytest.mark.parametrize("kind", ["quota", "cooling", "bad request"])
def test_a_refusal_is_decided_in_the_pre_call_hook_exactly_as_the_router_did(kind, proxy, sim, monkeypatch):
    handler, router, installed = proxy
    if kind == "quota":
        _fill_solo(handler, router)
        model, messages, status, cls = SOLO, None, 429, litellm.RateLimitError
    elif kind == "cooling":
        _cool_down(handler, router, sim)
        model, messages, status, cls = DOWN, None, 503, litellm.ServiceUnavailableError
    else:
        model, messages, status, cls = SOLO, [{"role": "nobody", "content": "hi"}], 400, litellm.BadRequestError

    async def scenario():
        old_data = _data(model, messages)
        old = await _old_path(handler, router, old_data)
        old_headers = await _proxy_headers(handler, old_data, old)
        plan = installed.plans.plan(router.get_model_list(model_name=model)[0])
        before = await installed.store.peek(plan)

        count = Counting(monkeypatch, router, installed)
        data = _data(model, messages)
        with pytest.raises(Exception) as caught:
            await handler.async_pre_call_hook(None, None, data, "completion")
        new = caught.value
        new_headers = await _proxy_headers(handler, data, new)
        after = await installed.store.peek(plan)
        return old, old_headers, new, new_headers, count, before, after, data

    old, old_headers, new, new_headers, count, before, after, data = asyncio.run(scenario())
    assert isinstance(new, cls) and type(new) is type(old)
    assert new.status_code == old.status_code == status
    assert _same_text(str(new)) == _same_text(str(old)), (str(new), str(old))
    assert "failed with the error above" in str(new)  # the Router's own note, as before
    assert _same_text(repr(sorted(new_headers.items()))) == _same_text(repr(sorted(old_headers.items())))
    if status != 400:
        assert int(new_headers["retry-after"]) >= 1 and new_headers["x-should-retry"] == "false"
    assert new_headers["x-router-plugin-deployment"] == "none"
    # decided once, never retried, and the Router (its fallback/retry wrappers, its failure alerts) never entered
    assert count.walks == 1
    assert count.fallback_calls == 0
    assert EARLY_KEY not in data["metadata"]
    # no quota spent: the counters read the same before and after
    assert [(s.counter.key, s.remaining) for s in getattr(before, "states", ()) or ()] == \
        [(s.counter.key, s.remaining) for s in getattr(after, "states", ()) or ()]
    assert getattr(before, "why", None) == getattr(after, "why", None)


def test_a_served_request_is_decided_once_and_the_router_takes_that_pick(proxy, monkeypatch):
    handler, router, installed = proxy

    async def scenario():
        count = Counting(monkeypatch, router, installed)
        data = _data(SOLO)
        returned = await handler.async_pre_call_hook(None, None, data, "completion")
        assert returned is data
        early = dict(data["metadata"][EARLY_KEY])
        assert count.walks == 1 and count.reservations == 1
        kwargs = {k: v for k, v in data.items() if k not in ("proxy_server_request", "litellm_call_id")}
        reply = await router.acompletion(**kwargs)
        return count, early, reply, data

    count, early, reply, data = asyncio.run(scenario())
    assert reply.choices[0].message.content
    assert early["group"] == SOLO
    assert count.walks == 1 and count.reservations == 1  # the Router's pick took the hook's decision
    assert EARLY_KEY not in data["metadata"]
    assert data["metadata"]["router_plugin"]["deployment_id"] == early["deployment_id"]


def test_a_pick_whose_request_fails_before_the_router_is_given_back(proxy):
    handler, router, installed = proxy

    async def scenario():
        data = _data(SOLO)
        await handler.async_pre_call_hook(None, None, data, "completion")
        plan = installed.plans.by_id(data["metadata"][EARLY_KEY]["deployment_id"])
        held = await installed.store.peek(plan)
        # a later hook (a guardrail, a budget check) rejects the request: the proxy calls the failure hook
        await handler.async_post_call_failure_hook(data, ValueError("blocked by a guardrail"), None)
        freed = await installed.store.peek(plan)
        again = _data(SOLO)
        await handler.async_pre_call_hook(None, None, again, "completion")  # rpm 1: fits again only if refunded
        return held, freed, data, again

    held, freed, data, again = asyncio.run(scenario())

    def minute_left(outcome):
        return [s.remaining for s in getattr(outcome, "states", ()) or () if s.counter.limit.name in ("minute", "rpm")]

    assert minute_left(held) == [0]  # rpm 1: the pick held the minute
    assert minute_left(freed) == [1]  # given back
    assert EARLY_KEY not in data["metadata"] and EARLY_KEY in again["metadata"]
