"""Simulated Groq: ``/openai/v1/chat/completions`` and ``/openai/v1/models``.

Mirrors providers.md §2:
* §2.1 — limits per (organisation = API key, model): RPM, RPD, TPM, TPD from the free-plan table
  (:mod:`.catalog`), each a continuously refilling bucket (:class:`.limits.GroqLimits`). A request reserves
  1 request and ``prompt + max_tokens`` tokens (``max_tokens`` absent = 1024) up front; after the reply the
  token buckets are settled to the real usage. Retired models answer 400 ``model_decommissioned``.
* §2.2 — every 200 and 429 (streams too) carries ``x-ratelimit-{limit,remaining,reset}-requests`` (the DAY)
  and ``-tokens`` (the MINUTE), resets as Go durations; a 429 adds ``retry-after`` = ceil(wait) seconds.
* §2.3 — error bodies ``{"error": {"message", "type", "code"?, "param"?}}``: 429 "Rate limit reached ... Please
  try again in <dur>", 413 "Request too large", 404 ``model_not_found``, 401 ``invalid_api_key``, 503 (not
  charged: the reservation is refunded, as for every forced 5xx); success extras ``usage`` timings, ``x_groq``,
  ``service_tier``; the stream's final chunk carries ``x_groq.usage`` before ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from http import HTTPStatus
from typing import Any

from aiohttp import web

from .answers import Answer
from .catalog import GROQ_MODELS, GROQ_RETIRED, GroqModel
from .gotime import go_duration
from .limits import GroqBlock
from .state import GroqSnapshot, SimState, key_hash
from .streaming import StreamPlan, send_stream
from .wire import (
    DEFAULT_MAX_TOKENS, ProviderHandler, bearer_key, json_response, max_tokens_of, prompt_tokens, read_json,
)

__all__ = ["add_routes", "BASE"]

BASE = "/openai/v1"
PROVIDER = "groq"
_UPGRADE = "Upgrade to Dev Tier today at https://console.groq.com/settings/billing"
_LIMIT_LABEL = {"rpm": "requests per minute (RPM)", "rpd": "requests per day (RPD)",
                "tpm": "tokens per minute (TPM)", "tpd": "tokens per day (TPD)"}


def _status_text(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def org_id(h: str) -> str:
    return f"org_01sim{h}"


def _error(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message, "type": type_}
    if code is not None:
        err["code"] = code
    if param is not None:
        err["param"] = param
    return {"error": err}


def ratelimit_headers(snap: GroqSnapshot) -> dict[str, str]:
    """providers.md §2.2: ``-requests`` describe RPD, ``-tokens`` describe TPM; resets are Go durations."""
    return {"x-ratelimit-limit-requests": str(snap.limit_requests),
            "x-ratelimit-remaining-requests": str(snap.remaining_requests),
            "x-ratelimit-reset-requests": go_duration(snap.reset_requests_s),
            "x-ratelimit-limit-tokens": str(snap.limit_tokens),
            "x-ratelimit-remaining-tokens": str(snap.remaining_tokens),
            "x-ratelimit-reset-tokens": go_duration(snap.reset_tokens_s)}


def rate_limit_body(model: str, h: str, block: GroqBlock) -> dict[str, Any]:
    kind = "tokens" if block.name in ("tpm", "tpd") else "requests"
    used = max(0, math.ceil(block.used - 1e-3))  # float drain noise is far below 1e-3
    message = (f"Rate limit reached for model `{model}` in organization `{org_id(h)}` service tier `on_demand` on "
               f"{_LIMIT_LABEL[block.name]}: Limit {block.limit}, Used {used}, Requested {block.requested}. "
               f"Please try again in {go_duration(block.wait)}. Need more {kind}? {_UPGRADE}")
    return _error(message, kind, "rate_limit_exceeded")


def too_large_body(model: str, h: str, limit: int, requested: int) -> dict[str, Any]:
    message = (f"Request too large for model `{model}` in organization `{org_id(h)}` service tier `on_demand` on "
               f"tokens per minute (TPM): Limit {limit}, Requested {requested}, please reduce your message size and "
               f"try again. Need more tokens? {_UPGRADE}")
    return _error(message, "tokens", "rate_limit_exceeded")


def not_found_body(model: str) -> dict[str, Any]:
    return _error(f"The model `{model}` does not exist or you do not have access to it.", "invalid_request_error",
                  "model_not_found")


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    """Groq's usage block with (deterministic, simulated) timings."""
    prompt_time, completion_time, queue_time = round(prompt * 2e-5, 6), round(completion * 2e-3, 6), 0.000125
    return {"queue_time": queue_time, "prompt_tokens": prompt, "prompt_time": prompt_time,
            "completion_tokens": completion, "completion_time": completion_time,
            "total_tokens": prompt + completion, "total_time": round(prompt_time + completion_time, 6)}


def _fingerprint(model: str) -> str:
    return "fp_" + hashlib.sha256(model.encode()).hexdigest()[:10]


class _Handler(ProviderHandler):
    PROVIDER = PROVIDER

    async def chat(self, request: web.Request) -> web.StreamResponse:
        key = bearer_key(request)
        if key is None:
            return self._reply(401, _error("Invalid API Key", "invalid_request_error", "invalid_api_key"),
                               model=None, h=None)
        h = key_hash(key)
        body = await read_json(request)
        if body is None:
            return self._reply(400, _error("We could not parse the JSON body of your request.",
                                           "invalid_request_error"), model=None, h=h)
        model, messages, stream = body.get("model"), body.get("messages"), bool(body.get("stream"))
        if not isinstance(model, str) or not model:
            return self._reply(400, _error("property 'model' is missing", "invalid_request_error", param="model"),
                               model=None, h=h, stream=stream)
        self.state.record_request(PROVIDER, model)
        reply = self._reply

        def fail(status: int, err: dict[str, Any], reason: str | None, headers: dict[str, str] | None = None):
            return reply(status, err, model=model, h=h, stream=stream, reason=reason, headers=headers)

        if not isinstance(messages, list) or not messages:
            return fail(400, _error("property 'messages' is missing", "invalid_request_error", param="messages"),
                        "invalid")
        if model in GROQ_RETIRED:
            return fail(400, _error(
                f"The model `{model}` has been decommissioned and is no longer supported. Please refer to "
                "https://console.groq.com/docs/deprecations for a recommendation on which model to use instead.",
                "invalid_request_error", "model_decommissioned"), "gone")
        meta = GROQ_MODELS.get(model)
        sw = self.state.switches(model)
        if meta is None or sw.gone:
            return fail(404, not_found_body(model), "gone" if meta else "unknown_model")
        if sw.reject_prefill and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            return fail(400, _error("assistant message prefill is not supported for this model",
                                    "invalid_request_error", param="messages"), "prefill")
        prompt, max_tokens = prompt_tokens(messages), max_tokens_of(body)
        if max_tokens is not None and max_tokens > meta.max_completion_tokens:
            return fail(400, _error(
                f"`max_tokens` must be less than or equal to `{meta.max_completion_tokens}`, the maximum value for "
                "`max_tokens` is less than the `context_window` for this model", "invalid_request_error",
                param="max_tokens"), "invalid")
        if prompt + (max_tokens or 0) > meta.context_window:
            return fail(400, _error("Please reduce the length of the messages or completion.", "invalid_request_error",
                                    "context_length_exceeded", "messages"), "context")
        requested = prompt + (max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS)
        caps = self.state.groq_caps(model)
        if requested > caps.tpm:
            return fail(413, too_large_body(model, h, caps.tpm, requested), "too_large",
                        ratelimit_headers(self.state.groq_snapshot(h, model)))
        block, snap = self.state.groq_admit(h, model, requested)
        headers = ratelimit_headers(snap)
        if block is not None:
            headers["retry-after"] = str(max(1, math.ceil(block.wait)))
            return fail(429, rate_limit_body(model, h, block), block.name, headers)
        if sw.latency_s > 0:
            await asyncio.sleep(sw.latency_s)
        if sw.busy:
            self.state.groq_refund(h, model, requested)
            return fail(503, _error(f"{model} is currently over capacity. Please try again and back off "
                                    "exponentially. Visit https://groqstatus.com to see if there is an active incident.",
                                    "internal_server_error", "service_unavailable"), "busy")
        status = self.state.take_status(model)
        if status is not None:
            if status >= 500:
                self.state.groq_refund(h, model, requested)
            type_ = "internal_server_error" if status >= 500 else "invalid_request_error"
            return fail(status, _error(_status_text(status), type_), "status")
        n = self.state.next_id()
        answer = Answer(body, model, max_tokens, call_id=f"call_sim{n:020d}")
        completion = answer.completion_tokens
        self.state.groq_settle(h, model, prompt + completion - requested)
        ids = {"id": f"chatcmpl-sim{n:020d}", "req": f"req_01sim{n:020d}", "created": int(self.state.now())}
        if sw.error_200 is not None and not stream:
            return fail(200, _error(_status_text(sw.error_200), "internal_server_error"),
                        "error_200", headers)
        if not stream:
            out = {"id": ids["id"], "object": "chat.completion", "created": ids["created"], "model": model,
                   "choices": [{"index": i, "message": answer.message(), "logprobs": None,
                                "finish_reason": answer.finish} for i in range(answer.n)],
                   "usage": _usage(prompt, completion), "usage_breakdown": None,
                   "system_fingerprint": _fingerprint(model), "x_groq": {"id": ids["req"]},
                   "service_tier": "on_demand"}
            return fail(200, out, None, headers)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        fault = "error_chunk" if sw.error_200 is not None else sw.stream_fault
        self.state.record_response(PROVIDER, model, 200, stream=True, key_hash=h, reason=fault)
        plan = self._stream_plan(meta, ids, prompt, answer, include_usage, headers)
        return await send_stream(request, plan, fault, sw.stall_s)

    @staticmethod
    def _stream_plan(meta: GroqModel, ids: dict[str, Any], prompt: int, answer: Answer, include_usage: bool,
                     headers: dict[str, str]) -> StreamPlan:
        def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0, **extra: Any) -> dict[str, Any]:
            return {"id": ids["id"], "object": "chat.completion.chunk", "created": ids["created"], "model": meta.id,
                    "system_fingerprint": _fingerprint(meta.id),
                    "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}

        usage = _usage(prompt, answer.completion_tokens)
        steps = answer.stream(role_first=True)
        content = [chunk(d, index=i, x_groq={"id": ids["req"]}, service_tier="on_demand") if k < answer.n
                   else chunk(d, index=i) for k, (i, d) in enumerate(steps)]
        tail = [chunk({}, answer.finish, index=i) for i in range(1, answer.n)]
        tail.insert(0, chunk({}, answer.finish, x_groq={"id": ids["req"], "usage": usage}))
        if include_usage:
            tail.append({**chunk({}), "choices": [], "usage": usage})
        error = _error("Service Unavailable", "internal_server_error")
        return StreamPlan(content=content, tail=tail, error_event=error, headers=headers)

    async def models(self, request: web.Request) -> web.Response:
        """``GET /openai/v1/models`` (§2.4); needs a key like the real API; ``gone`` models are left out."""
        if bearer_key(request) is None:
            return json_response(401, _error("Invalid API Key", "invalid_request_error", "invalid_api_key"))
        self.state.record_endpoint(PROVIDER, "/models")
        data = [{"id": m.id, "object": "model", "created": m.created, "owned_by": m.owned_by, "active": True,
                 "context_window": m.context_window, "public_apps": None,
                 "max_completion_tokens": m.max_completion_tokens}
                for m in GROQ_MODELS.values() if not self.state.switches(m.id).gone]
        return json_response(200, {"object": "list", "data": data})


def add_routes(app: web.Application, state: SimState) -> None:
    h = _Handler(state)
    app.router.add_post(f"{BASE}/chat/completions", h.chat)
    app.router.add_get(f"{BASE}/models", h.models)
