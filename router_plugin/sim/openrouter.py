"""Simulated OpenRouter: ``/api/v1/chat/completions``, ``/api/v1/models``, ``/api/v1/key``.

Mirrors providers.md §1:
* §1.1 free tier — one pool per account (API key) shared by every ``:free`` model and ``openrouter/free``:
  20 per clock minute, 50 per UTC day (1000 when funded). Every admitted attempt counts, including ones that then
  fail (404 gone, 429 busy upstream, forced 5xx). Refused attempts (the limiter's own 429, 400 validation,
  401, 402) are not counted. Non-free models have no free-tier limit.
* §1.2 — platform 429s carry ``X-RateLimit-Limit/-Remaining/-Reset`` (Reset in epoch ms, as a string) as HTTP
  headers and in ``error.metadata.headers``; no ``Retry-After``; successful replies carry no X-RateLimit headers.
* §1.3 — error envelope ``{"error": {"code", "message", "metadata"?}, "user_id"}`` and its variants:
  per-min / per-day / high-balance 429, upstream "Provider returned error" 429, 402, 404 "No endpoints found",
  400 unknown model / context length, 200-with-error, mid-stream error chunk, ``: OPENROUTER PROCESSING``.
* §1.4 ``GET /key`` and §1.5 ``GET /models`` shapes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .answers import Answer
from .catalog import OPENROUTER_FREE_ROUTER, OPENROUTER_MODELS, OpenRouterModel
from .limits import PoolBlock
from .state import AccountSettings, SimState, key_hash
from .streaming import StreamPlan, send_stream
from .wire import (
    ProviderHandler, bearer_key, json_response, max_tokens_of, prompt_tokens, read_json,
)

__all__ = ["add_routes", "BASE"]

BASE = "/api/v1"
PROVIDER = "openrouter"
_CREDITS_URL = "https://openrouter.ai/settings/credits"

#: Forced-status messages and ``metadata.error_type`` (providers.md §1.3 "Other statuses", "Typed error_type").
_STATUS_TEXT: dict[int, tuple[str, str]] = {
    408: ("Provider returned error", "timeout"),
    429: ("Rate limit exceeded", "rate_limit_exceeded"),
    500: ("Internal Server Error", "server_error"),
    502: ("Provider returned error", "provider_unavailable"),
    503: ("There is no available model provider that meets your routing requirements", "provider_overloaded"),
    504: ("Timeout", "timeout"),
    524: ("Provider returned error", "timeout"),
    529: ("Provider returned error", "provider_overloaded"),
}


def user_id(h: str) -> str:
    return f"user_sim{h}"


def _error(code: int, message: str, h: str | None, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message, "code": code}
    if metadata is not None:
        err["metadata"] = metadata
    body: dict[str, Any] = {"error": err}
    if h is not None:
        body["user_id"] = user_id(h)
    return body


def platform_429(block: PoolBlock, settings: AccountSettings, h: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Free-models-per-min / -per-day 429 (body and the identical HTTP header triplet), providers.md §1.3."""
    headers = {"X-RateLimit-Limit": str(block.limit), "X-RateLimit-Remaining": "0",
               "X-RateLimit-Reset": str(block.reset_ms)}
    metadata: dict[str, Any] = {"headers": headers, "provider_name": None}
    if block.window == "minute":
        message = "Rate limit exceeded: free-models-per-min. "
    elif settings.funded:
        message = "Rate limit exceeded: free-models-per-day-high-balance. "
    else:
        message = "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day"
    if block.window == "day":
        metadata.update(limit_source="openrouter_free_tier_daily", remedy_hint="Wait for the daily reset")
    return _error(429, message, h, metadata), dict(headers)


def upstream_busy(meta: OpenRouterModel, h: str) -> dict[str, Any]:
    """Upstream provider 429 ("Provider returned error", provider_name set, no X-RateLimit), providers.md §1.3."""
    return _error(429, "Provider returned error", h, {
        "raw": f"{meta.canonical_slug} is temporarily rate-limited upstream. Please retry shortly, or add your own "
               "key to accumulate your rate limits: https://openrouter.ai/settings/integrations",
        "provider_name": meta.provider, "is_byok": False, "provider_error_code": "engine_overloaded",
        "limit_source": "upstream_provider_shared_pool",
        "remedy_hint": "Retry shortly, add your own provider key (https://openrouter.ai/settings/integrations), or "
                       "route to another provider with provider routing: "
                       "https://openrouter.ai/docs/features/provider-routing"})


def forced_status(status: int, meta: OpenRouterModel, h: str) -> dict[str, Any]:
    message, error_type = _STATUS_TEXT.get(status, ("Provider returned error", "server_error"))
    metadata: dict[str, Any] = {"error_type": error_type}
    if message == "Provider returned error":
        metadata.update(raw=f"upstream returned HTTP {status}", provider_name=meta.provider)
    return _error(status, message, h, metadata)


def _error_in_200(code: int, meta: OpenRouterModel, h: str) -> dict[str, Any]:
    """HTTP 200 whose body is only a top-level ``error`` (providers.md §1.3, litellm#8448)."""
    return _error(code, "Provider returned error", h, {"raw": "error code: 1015", "provider_name": meta.provider})


def _served_model(state: SimState, requested: OpenRouterModel) -> OpenRouterModel | None:
    """``openrouter/free`` picks a free model: deterministically the first healthy one in roster order."""
    if requested.id != OPENROUTER_FREE_ROUTER:
        return requested
    for m in OPENROUTER_MODELS.values():
        if m.free and m.id != OPENROUTER_FREE_ROUTER:
            sw = state.switches(m.id)
            if not (sw.gone or sw.busy or sw.status):
                return m
    return None


def _usage(meta: OpenRouterModel, prompt: int, completion: int) -> dict[str, Any]:
    cost = prompt * float(meta.prompt_price) + completion * float(meta.completion_price)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "cost": round(cost, 12), "is_byok": False, "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}}


class _Handler(ProviderHandler):
    PROVIDER = PROVIDER

    async def chat(self, request: web.Request) -> web.StreamResponse:
        key = bearer_key(request)
        if key is None:
            return self._reply(401, _error(401, "No auth credentials found", None), model=None, h=None)
        h = key_hash(key)
        body = await read_json(request)
        if body is None:
            return self._reply(400, _error(400, "Invalid JSON in request body", h), model=None, h=h)
        model, messages, stream = body.get("model"), body.get("messages"), bool(body.get("stream"))
        if not isinstance(model, str) or not model:
            return self._reply(400, _error(400, "No model provided", h), model=None, h=h, stream=stream)
        self.state.record_request(PROVIDER, model)
        reply = self._reply

        def fail(status: int, err: dict[str, Any], reason: str | None, headers: dict[str, str] | None = None):
            return reply(status, err, model=model, h=h, stream=stream, reason=reason, headers=headers)

        if not isinstance(messages, list) or not messages:
            return fail(400, _error(400, 'Input required: specify "prompt" or "messages"', h), "invalid")
        meta = OPENROUTER_MODELS.get(model)
        if meta is None:
            return fail(400, _error(400, f"{model} is not a valid model ID", h), "unknown_model")
        settings = self.state.account(h)
        if settings.balance_negative:
            return fail(402, _error(402, f"Insufficient credits. Add more using {_CREDITS_URL}", h,
                                    {"provider_name": None}), "credits")
        prompt, max_tokens = prompt_tokens(messages), max_tokens_of(body)
        if prompt + (max_tokens or 0) > meta.context_length:
            msg = (f"This endpoint's maximum context length is {meta.context_length} tokens. However, you requested "
                   f"about {prompt + (max_tokens or 0)} tokens ({prompt} of text input, {max_tokens or 0} in the "
                   'output). Please reduce the length of either one, or use the "middle-out" transform to compress '
                   "your prompt automatically.")
            return fail(400, _error(400, msg, h, {"error_type": "context_length_exceeded", "provider_name": None}),
                        "context")
        if meta.free:
            block, settings = self.state.openrouter_admit(h)
            if block is not None:
                err, headers = platform_429(block, settings, h)
                return fail(429, err, block.window, headers)
        sw = self.state.switches(model)
        if sw.latency_s > 0:
            await asyncio.sleep(sw.latency_s)
        if sw.gone:
            return fail(404, _error(404, f"No endpoints found for {model}.", h), "gone")
        served = _served_model(self.state, meta)
        if served is None:
            return fail(404, _error(404, f"No endpoints found for {model}.", h), "gone")
        if sw.busy:
            return fail(429, upstream_busy(served, h), "busy")
        if sw.reject_prefill and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            return fail(400, _error(400, "Provider returned error", h, {
                "raw": "assistant message prefill is not supported by this model", "provider_name": served.provider}),
                "prefill")
        status = self.state.take_status(model)
        if status is not None:
            return fail(status, forced_status(status, served, h), "status")
        seq = self.state.next_id()
        answer = Answer(body, served.id, max_tokens, call_id=f"call_sim{seq:020d}")
        completion = answer.completion_tokens
        gen_id = f"gen-{int(self.state.now())}-{seq:020d}"
        created = int(self.state.now())
        if not stream:
            if sw.error_200 is not None:
                return fail(200, _error_in_200(sw.error_200, served, h), "error_200")
            out = {"id": gen_id, "provider": served.provider, "model": served.id, "object": "chat.completion",
                   "created": created,
                   "choices": [{"logprobs": None, "finish_reason": answer.finish,
                                "native_finish_reason": answer.finish, "index": i,
                                "message": {**answer.message(), "refusal": None, "reasoning": None}}
                               for i in range(answer.n)],
                   "usage": _usage(served, prompt, completion)}
            return fail(200, out, None)
        self.state.record_response(PROVIDER, model, 200, stream=True, key_hash=h,
                                   reason="error_200" if sw.error_200 is not None else sw.stream_fault)
        plan = self._stream_plan(gen_id, created, served, prompt, answer, sw.error_200)
        fault = "error_chunk" if sw.error_200 is not None else sw.stream_fault
        return await send_stream(request, plan, fault, sw.stall_s)

    @staticmethod
    def _stream_plan(gen_id: str, created: int, meta: OpenRouterModel, prompt: int, answer: Answer,
                     error_code: int | None) -> StreamPlan:
        def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0, **extra: Any) -> dict[str, Any]:
            return {"id": gen_id, "provider": meta.provider, "model": meta.id, "object": "chat.completion.chunk",
                    "created": created,
                    "choices": [{"index": index, "delta": delta, "finish_reason": finish,
                                 "native_finish_reason": finish, "logprobs": None}], **extra}

        steps = [] if error_code is not None else answer.stream(role_first=False)
        content = [chunk(d, index=i) for i, d in steps]
        completion = answer.completion_tokens
        tail = [chunk({"role": "assistant", "content": ""}, answer.finish, index=i) for i in range(answer.n)]
        tail.append({**chunk({"role": "assistant", "content": ""}), "choices": [],
                     "usage": _usage(meta, prompt, completion)})
        if error_code is None:  # the documented mid-stream example, verbatim apart from ids
            err: dict[str, Any] = {"code": 429, "message": "Rate limit exceeded",
                                   "metadata": {"error_type": "rate_limit_exceeded"}}
        else:
            err = {"code": error_code, "message": "Provider returned error",
                   "metadata": {"raw": "error code: 1015", "provider_name": meta.provider}}
        error = {"id": gen_id, "object": "chat.completion.chunk", "created": created, "model": meta.id,
                 "provider": meta.provider, "error": err,
                 "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}
        return StreamPlan(content=content, tail=tail, error_event=error, prelude=["OPENROUTER PROCESSING"])

    async def models(self, request: web.Request) -> web.Response:
        """``GET /api/v1/models`` (public, no key needed): the roster minus models switched ``gone`` (§1.5)."""
        self.state.record_endpoint(PROVIDER, "/models")
        data = [_model_object(m) for m in OPENROUTER_MODELS.values() if not self.state.switches(m.id).gone]
        return json_response(200, {"data": data})

    async def key(self, request: web.Request) -> web.Response:
        """``GET /api/v1/key`` (§1.4) with live ``free_model_daily_requests``; counts toward nothing."""
        key = bearer_key(request)
        if key is None:
            return json_response(401, _error(401, "No auth credentials found", None))
        h = key_hash(key)
        self.state.record_endpoint(PROVIDER, "/key")
        used, settings = self.state.openrouter_day(h)
        return json_response(200, {"data": {
            "label": f"sim-key-{h}", "limit": None, "limit_reset": None, "limit_remaining": None,
            "include_byok_in_limit": False, "usage": 0, "usage_daily": 0, "usage_weekly": 0, "usage_monthly": 0,
            "byok_usage": 0, "byok_usage_daily": 0, "byok_usage_weekly": 0, "byok_usage_monthly": 0,
            "is_free_tier": not settings.funded, "is_management_key": False, "is_provisioning_key": False,
            "creator_user_id": user_id(self.state.account_id(h)), "expires_at": None,
            "free_model_daily_requests": {"used": used, "limit": settings.daily_limit,
                                          "remaining": max(0, settings.daily_limit - used)},
            "rate_limit": {"requests": -1, "interval": "10s", "note": "deprecated"}}})


def _model_object(m: OpenRouterModel) -> dict[str, Any]:
    return {
        "id": m.id, "canonical_slug": m.canonical_slug, "hugging_face_id": None, "name": m.name, "created": m.created,
        "description": f"{m.name} (simulated)", "context_length": m.context_length,
        "architecture": {"modality": "text->text", "input_modalities": ["text"], "output_modalities": ["text"],
                         "tokenizer": m.tokenizer, "instruct_type": None},
        "pricing": {"prompt": m.prompt_price, "completion": m.completion_price, "request": "0", "image": "0",
                    "web_search": "0", "internal_reasoning": "0"},
        "top_provider": {"context_length": m.context_length, "max_completion_tokens": m.max_completion_tokens,
                         "is_moderated": not m.free and m.provider == "OpenAI"},
        "per_request_limits": None, "supported_parameters": list(m.supported_parameters),
        "default_parameters": {}, "supported_voices": None, "links": {"details": f"/api/v1/models/{m.id}/endpoints"},
        "expiration_date": None,
    }


def add_routes(app: web.Application, state: SimState) -> None:
    h = _Handler(state)
    app.router.add_post(f"{BASE}/chat/completions", h.chat)
    app.router.add_get(f"{BASE}/models", h.models)
    app.router.add_get(f"{BASE}/key", h.key)
