"""Streams end with one whole answer or a clear error: stalls are cut, broken answers are continued elsewhere.

LiteLLM 1.108's own mid-stream fallback (``Router._acompletion_streaming_iterator``, ``MidStreamFallbackError``)
only falls back *before* the first chunk; once content was generated it re-raises the provider error, and a body
that ends orderly without a finish chunk is handed to the caller with a synthetic ``finish_reason: "stop"`` — a
truncated answer that looks complete. It has no idle limit either: a stalled stream holds the caller until the
transport gives up. So the plugin wraps ``Router.acompletion`` for ``stream=True`` (SDK and proxy alike; the
proxy calls the same method; a sync ``Router.completion(stream=True)`` reads the same guarded stream from a
background event loop, ``SyncGuardedStream``) and walks the stream itself:

* **first token / stall** — the first content chunk must arrive within ``timeouts.first_token_s`` of the attempt's
  start, each later chunk within ``timeouts.stream_idle_s`` of the previous one, all inside ``timeouts.total_s``.
  An attempt that misses is abandoned and recorded as a failure of its deployment (cooldown for every worker).
* **broken off** — the transport failed (connection cut), an in-band error chunk arrived (OpenRouter's
  ``finish_reason: "error"`` chunk with an ``error`` object; Groq's ``error`` event), the finish reason was
  ``"error"``, or the body ended with no finish reason from the provider (LiteLLM's synthetic "stop" is caught
  before it reaches the caller).
* **then** the answer goes on at the next deployment of the chain (the strategy skips what already failed): the
  conversation plus the partial answer as an assistant prefill, ``max_tokens`` reduced by what was delivered;
  its chunks follow the ones the caller already has, so the caller reads one answer. If the caller has received
  no content yet, the request simply restarts on the next deployment. A deployment that rejects the prefill
  (HTTP 400/422 on the continuation) is passed over for the next one; when none can continue, the caller gets a
  ``StreamInterruptedError`` that names the *original* failure — never the prefill rejection — and the iterator
  never ends as if the answer were complete.
* **orderly tails** — a malformed SSE event (``data: {not json``, or JSON that is not an event object such as
  ``data: [1,2,3]``) is skipped and the stream read on, as a careful client does, on every provider path
  (:func:`_lenient_sse`: LiteLLM's own SSE parser and the openai SDK's, only while the plugin reads a guarded
  stream); after the finish chunk,
  trailing silence (no ``[DONE]``) is waited out for at most ``FINISH_GRACE_S`` and the answer ends complete,
  with the usage chunk if it came.

Accounting: every attempt counts (``metadata["router_plugin"]["attempts"]``, the providers' counters); a broken
attempt is never booked as a completion (its reservation is refunded, ``events.failed`` fires, ``succeeded`` does
not); ``metadata["router_plugin"]["model"]`` is the deployment that finished the answer, ``hops`` lists each
stream that contributed, and the usage the caller sees is that of the deployment that finished.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import litellm
from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper

from .. import prefill
from ..prefill import CONTINUE_INSTRUCTION
from ..providers.facts import Fact, ServerError
from ..redact import scrub
from .strategy import EXCLUDE_KEY, METADATA_KEY, ChainFailedError, QuotaExhaustedError
from .timeouts import DEADLINE_KEY, FAILED_KEY, BudgetExceededError, install_attempt_limits, request_metadata

log = logging.getLogger("router_plugin")

#: After the provider's finish chunk, wait at most this long for the usage chunk / end of body (no ``[DONE]``).
FINISH_GRACE_S = 1.0
_INNER = "_router_plugin_inner"
_PREFIX = re.compile(r"^(?:litellm\.\w+: )?(?:\w+Error: |Timeout: )?")
_MARK = "_router_plugin_stream_guard"
#: What a hop's metadata hands back to the caller's (LiteLLM's routing fields and the plugin's failure record).
_KEYS_BACK = (FAILED_KEY, "model_group", "model_group_alias", "deployment", "model_info", "api_base",
              "previous_models", "attempted_retries", "attempted_fallbacks", "caching_groups")


#: Set while the plugin reads a guarded stream (its first chunk inside the router, then each chunk): the SSE parsers
#: skip malformed events then, and nowhere else in the process.
_LENIENT: contextvars.ContextVar[bool] = contextvars.ContextVar("router_plugin_lenient_sse", default=False)
_LENIENT_MARK = "_router_plugin_lenient"


def _malformed(data: Any) -> bool:
    """An SSE ``data`` payload that is neither ``[DONE]`` nor a JSON object."""
    if not isinstance(data, str) or not data.strip() or data.lstrip().startswith("[DONE]"):
        return False
    try:
        return not isinstance(json.loads(data), dict)
    except ValueError:
        return True


def _lenient_sse() -> None:
    """Skip one malformed SSE event instead of breaking the stream (once per process; inert outside ``_LENIENT``).

    Two parsers read SSE for LiteLLM 1.108: its own (``BaseModelResponseIterator``: groq/, openrouter/ and other
    providers; it already skips text that is not JSON, but hands ``[1,2,3]`` to the provider's chunk parser, which
    raises) and the openai SDK's (``openai/`` deployments: ``Stream``/``AsyncStream``, which raises on both)."""
    try:
        from litellm.llms.base_llm.base_model_iterator import BaseModelResponseIterator

        parse = BaseModelResponseIterator.__dict__.get("_string_to_dict_parser")
        inner = getattr(parse, "__func__", None)
        if inner is not None and not getattr(inner, _LENIENT_MARK, False):
            def _string_to_dict_parser(str_line: str):
                parsed = inner(str_line)
                if _LENIENT.get() and parsed is not None and not isinstance(parsed, dict):
                    log.info("router_plugin: skipped a malformed stream event (JSON, but not an event object)")
                    return None
                return parsed

            setattr(_string_to_dict_parser, _LENIENT_MARK, True)
            BaseModelResponseIterator._string_to_dict_parser = staticmethod(_string_to_dict_parser)
    except Exception as exc:  # pragma: no cover - another LiteLLM: malformed events then break the stream
        log.debug("router_plugin: cannot make LiteLLM's SSE parser lenient: %s", exc)
    try:
        from openai import _streaming

        for cls, is_async in ((_streaming.AsyncStream, True), (_streaming.Stream, False)):
            original = cls.__dict__.get("_iter_events")
            if original is None or getattr(original, _LENIENT_MARK, False):
                continue
            cls._iter_events = _skip_malformed_async(original) if is_async else _skip_malformed(original)
    except Exception as exc:  # pragma: no cover
        log.debug("router_plugin: cannot make the openai SDK's SSE parser lenient: %s", exc)


def _skipped(sse: Any) -> bool:
    """A malformed data event inside a guarded stream: skipped (logged), as a careful client would."""
    if _LENIENT.get() and getattr(sse, "event", None) is None and _malformed(getattr(sse, "data", None)):
        log.info("router_plugin: skipped a malformed stream event")
        return True
    return False


def _skip_malformed_async(original: Any) -> Any:
    async def _iter_events(self):
        async for sse in original(self):
            if not _skipped(sse):
                yield sse

    setattr(_iter_events, _LENIENT_MARK, True)
    return _iter_events


def _skip_malformed(original: Any) -> Any:
    def _iter_events(self):
        for sse in original(self):
            if not _skipped(sse):
                yield sse

    setattr(_iter_events, _LENIENT_MARK, True)
    return _iter_events


class StreamInterruptedError(litellm.ServiceUnavailableError):
    """The answer broke off and no deployment of the chain could finish it. The message names the original
    failure first; ``original_exception`` is that failure when it was an exception."""

    def __init__(self, model: str, message: str, original_exception: BaseException | None = None):
        super().__init__(message=f"router_plugin: {scrub(message)}", llm_provider="router_plugin", model=model,
                         num_retries=0)
        self.original_exception = original_exception


def install_stream_guard(router: Any, inst: Any, line: Any) -> None:
    """Wrap the public ``router.acompletion`` / ``completion`` (budget; streams guarded) and make the SSE parsers
    skip a malformed event inside a guarded stream (private, every line). On 1.108 only (private
    hooks, checked by line.check): per-attempt limits around ``router._acompletion`` (timeouts.py) and LiteLLM's
    inner stream wrapper kept so a stream with no provider finish reason is told from a
    complete one (the core lines raise on such a stream themselves)."""
    if router.__dict__.get(_MARK):
        return
    _lenient_sse()  # every line (private, line.NEEDS "malformed stream events skipped")
    if not line.core:
        install_attempt_limits(router, inst.settings.timeouts, inst.callbacks.record_failure, METADATA_KEY)
        _keep_inner_wrapper(router)
    original = router.acompletion

    async def acompletion(model: str, messages: list, stream: bool = False, **kwargs: Any):
        call = _Call(original, inst, model, messages, kwargs)
        if not stream:
            return await call.complete()
        return await call.stream()

    router.acompletion = acompletion
    sync_completion = router.completion

    def completion(model: str, messages: list, stream: bool = False, **kwargs: Any):
        """Sync calls: a plain reply takes LiteLLM's sync path (time limits from the transport); a stream runs the
        guarded async stream above on the plugin's bridge loop and is read chunk by chunk, so a sync caller gets
        the same idle limit, budget and continuation as an async one."""
        if not stream:
            return sync_completion(model=model, messages=messages, **kwargs)
        loop = _bridge_loop()
        guarded = asyncio.run_coroutine_threadsafe(
            acompletion(model=model, messages=messages, stream=True, **kwargs), loop).result()
        return SyncGuardedStream(guarded, loop)

    router.completion = completion
    router.__dict__[_MARK] = True


def _keep_inner_wrapper(router: Any) -> None:
    """1.108: the provider's own finish reason is only on LiteLLM's inner stream wrapper (private iterator)."""
    inner_iterator = router._acompletion_streaming_iterator

    async def _acompletion_streaming_iterator(*args: Any, **kwargs: Any):
        wrapped = await inner_iterator(*args, **kwargs)
        inner = kwargs.get("model_response", args[0] if args else None)
        try:
            setattr(wrapped, _INNER, inner)
        except Exception:  # pragma: no cover - a wrapper that refuses attributes: trust its chunks
            pass
        return wrapped

    router._acompletion_streaming_iterator = _acompletion_streaming_iterator


_bridge: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None
_bridge_lock = threading.Lock()


def _bridge_loop() -> asyncio.AbstractEventLoop:
    """One event loop per process, in a daemon thread, for sync streams (started on first use)."""
    global _bridge
    with _bridge_lock:
        if _bridge is None or not _bridge[1].is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="router_plugin-sync-streams", daemon=True)
            thread.start()
            _bridge = (loop, thread)
        return _bridge[0]


class SyncGuardedStream:
    """A ``GuardedStream`` read from sync code: each ``next()`` waits for the next guarded chunk on the bridge loop.
    Errors (``StreamInterruptedError``, ``BudgetExceededError``, ...) are raised from ``next()`` as they are."""

    def __init__(self, stream: "GuardedStream", loop: asyncio.AbstractEventLoop):
        self._stream = stream
        self._loop = loop
        self.model = getattr(stream, "model", None)
        self._hidden_params = getattr(stream, "_hidden_params", {})

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return asyncio.run_coroutine_threadsafe(self._stream.__anext__(), self._loop).result()
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Stop reading early (the attempt in flight is abandoned, as with an async ``aclose()``)."""
        asyncio.run_coroutine_threadsafe(self._stream.aclose(), self._loop).result()


# --------------------------------------------------------------------------------------------- one call


@dataclass
class _Hop:
    """One stream of the call: a router.acompletion(stream=True) that returned."""

    response: Any
    metadata: dict
    inner: Any
    first_token_by: float | None
    content_chars: int = 0
    finish: str | None = None
    usage_tokens: int = 0

    @property
    def state(self) -> dict:
        value = self.metadata.get(METADATA_KEY)
        return value if isinstance(value, dict) else {}

    @property
    def model(self) -> str:
        return str(self.state.get("model") or "?")


@dataclass(eq=False)
class _Broke(Exception):
    """A hop ended without a complete answer."""

    why: str  # for people: "stream cut after 31 characters: APIConnectionError: ..."
    fact: Fact | None = None  # set when the plugin detected it (LiteLLM fired no failure event)
    exc: BaseException | None = None
    cool: bool = True
    budget: bool = False


@dataclass
class _Call:
    original: Any
    inst: Any
    model: str
    messages: list
    kwargs: dict
    parts: list[str] = field(default_factory=list)
    delivered_chunks: int = 0
    tool_calls: bool = False
    hops: list[dict] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    first_failure: _Broke | None = None
    no_continuation: list[str] = field(default_factory=list)
    attempts: int = 0
    restate_ids: set = field(default_factory=set)  # deployments that refused a prefill in this call

    def __post_init__(self) -> None:
        self.limits = self.inst.settings.timeouts
        self.caller_md = request_metadata(self.kwargs)
        self.deadline = time.time() + self.limits.total_s
        # A fresh record for this call (a caller may hand the same metadata dict to every call).
        for key in (METADATA_KEY, EXCLUDE_KEY):
            self.caller_md.pop(key, None)
        self.caller_md[FAILED_KEY] = []
        self.caller_md[DEADLINE_KEY] = self.deadline
        self.base_md: dict = self.caller_md

    # ---- non-streamed: the budget only (attempt limits apply inside the router) --------------------------

    async def complete(self) -> Any:
        left = self.deadline - time.time()
        try:
            async with asyncio.timeout(max(0.0, left) + 0.5):  # a backstop: attempts are capped by the budget
                return await self.original(model=self.model, messages=self.messages, **self.kwargs)
        except TimeoutError as exc:
            raise BudgetExceededError(self.model, f"no answer within the {self.limits.total_s:g} s budget") from exc

    # ---- streamed ----------------------------------------------------------------------------------------

    async def stream(self) -> "GuardedStream":
        hop = await self._open(continuation=False)
        return GuardedStream(hop.response, self._run(hop))

    async def _open(self, continuation: bool, restate: bool = False) -> _Hop:
        md = {k: v for k, v in self.base_md.items() if k not in (METADATA_KEY, EXCLUDE_KEY)}
        # A provider's rejection of an earlier hop's request (e.g. of its prefill) does not stop this new request
        # (hooks.GuardedStrategy re-raises a rejection only within the LiteLLM call it happened in).
        md[FAILED_KEY] = [{k: v for k, v in e.items() if k != "rejection"} if isinstance(e, Mapping) else e
                          for e in md.get(FAILED_KEY) or ()]
        md[METADATA_KEY] = {"attempts": self.attempts}
        md[EXCLUDE_KEY] = list(self.excluded)
        md[DEADLINE_KEY] = self.deadline
        kwargs = dict(self.kwargs)
        kwargs["litellm_metadata" if self.caller_md is self.kwargs.get("litellm_metadata") else "metadata"] = md
        messages = list(self.messages)
        if continuation:
            messages.append({"role": "assistant", "content": "".join(self.parts)})
            if restate:  # a model that takes no prefill: the partial answer as its turn, then "go on from there"
                messages.append({"role": "user", "content": CONTINUE_INSTRUCTION})
            for key in ("max_tokens", "max_completion_tokens"):
                value = kwargs.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    kwargs[key] = max(1, value - self.delivered_chunks)
        self.base_md = md
        lenient = _LENIENT.set(True)  # the router reads the first chunk inside this call
        try:
            response = await self.original(model=self.model, messages=messages, stream=True, **kwargs)
        finally:
            _LENIENT.reset(lenient)
            state = md.get(METADATA_KEY)
            if isinstance(state, dict):
                self.attempts = max(self.attempts, int(state.get("attempts", 0)))
            self._publish(md)
        state = md.get(METADATA_KEY) if isinstance(md.get(METADATA_KEY), dict) else {}
        first_by = state.get("first_token_by")
        return _Hop(response, md, getattr(response, _INNER, None),
                    float(first_by) if isinstance(first_by, (int, float)) else None)

    def _publish(self, md: Mapping[str, Any]) -> None:
        """What the caller reads in ``metadata["router_plugin"]``: the deployment serving now, every attempt."""
        for key in _KEYS_BACK:
            if key in md:
                self.caller_md[key] = md[key]
        state = md.get(METADATA_KEY)
        summary = dict(state) if isinstance(state, dict) else {}
        summary.pop("owner", None)
        summary.pop("first_token_by", None)
        summary["attempts"] = self.attempts
        summary["hops"] = [dict(h) for h in self.hops]
        if self.hops:
            summary["continued"] = bool(self.first_failure and self.parts)
        self.caller_md[METADATA_KEY] = summary

    async def _run(self, hop: _Hop):
        try:
            while True:
                try:
                    async for chunk in self._relay(hop):
                        yield chunk
                    self.hops.append({"model": hop.model, "outcome": "complete", "chars": hop.content_chars})
                    self._publish(hop.metadata)
                    return
                except _Broke as broke:
                    await self._close(hop)
                    await self._book(hop, broke)
                    hop = await self._next(broke)
        finally:
            await self._close(hop)

    async def _relay(self, hop: _Hop):
        iterator = hop.response.__aiter__()
        while True:
            wait, budget_bound, phase = self._wait(hop)
            lenient = _LENIENT.set(True)
            try:
                async with asyncio.timeout(wait) as scope:
                    chunk = await iterator.__anext__()
            except StopAsyncIteration:
                if hop.finish is not None:
                    return
                raise _Broke(f"stream from {hop.model} ended after {hop.content_chars} characters with no finish "
                             "reason", ServerError(None, "stream ended without a finish reason")) from None
            except TimeoutError as exc:
                if not scope.expired():
                    raise _Broke(f"stream from {hop.model} failed: {_describe(exc)}", exc=exc) from None
                if hop.finish is not None:
                    # LiteLLM fires its success event only at the end of the body: book the completion here.
                    log.info("router_plugin: %s finished but sent no end of stream; ending the answer", hop.model)
                    await self.inst.callbacks.record_completion(hop.state, hop.usage_tokens)
                    return
                if budget_bound:
                    raise _Broke(f"the {self.limits.total_s:g} s budget ran out while {hop.model} was streaming",
                                 ServerError(None, "cut short by the call's budget"), cool=False,
                                 budget=True) from None
                raise _Broke(f"stream from {hop.model} sent no {phase} within {wait:g} s "
                             f"({'stalled' if hop.content_chars else 'no first token'})",
                             ServerError(None, f"stream silent for {wait:g} s ({phase})")) from None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the transport or an in-band error chunk; LiteLLM books these itself
                raise _Broke(f"stream from {hop.model} broke off after {hop.content_chars} characters: "
                             f"{_describe(exc)}", exc=exc) from None
            finally:
                _LENIENT.reset(lenient)
            choice = chunk.choices[0] if getattr(chunk, "choices", None) else None
            finish = getattr(choice, "finish_reason", None) if choice is not None else None
            if finish is not None and hop.finish is None:
                said = None if hop.inner is None else (getattr(hop.inner, "received_finish_reason", None)
                                                       or getattr(hop.inner, "intermittent_finish_reason", None))
                if finish == "error" or said == "error":
                    raise _Broke(f"stream from {hop.model} ended with finish_reason 'error' after "
                                 f"{hop.content_chars} characters", ServerError(None, "finish_reason error"))
                if hop.inner is not None and said is None:  # LiteLLM's synthetic "stop": the provider sent none
                    raise _Broke(f"stream from {hop.model} ended after {hop.content_chars} characters with no "
                                 "finish reason", ServerError(None, "stream ended without a finish reason"))
                hop.finish = finish
            usage = getattr(chunk, "usage", None)
            if usage is not None and isinstance(getattr(usage, "total_tokens", None), int):
                hop.usage_tokens = usage.total_tokens
            delta = getattr(choice, "delta", None) if choice is not None else None
            content = getattr(delta, "content", None) if delta is not None else None
            if getattr(delta, "tool_calls", None):
                self.tool_calls = True
            if content:
                self.parts.append(content)
                self.delivered_chunks += 1
                hop.content_chars += len(content)
            yield chunk

    def _wait(self, hop: _Hop) -> tuple[float, bool, str]:
        """(seconds to wait for the next chunk, whether the budget is what binds, what is awaited)."""
        now = time.time()
        if hop.finish is not None:
            wait, phase = min(self.limits.stream_idle_s, FINISH_GRACE_S), "end of stream"
        elif hop.content_chars == 0:
            by = hop.first_token_by if hop.first_token_by is not None else now + self.limits.first_token_s
            wait, phase = max(0.0, by - now), "first token"
        else:
            wait, phase = self.limits.stream_idle_s, "chunk"
        left = max(0.0, self.deadline - now)
        return (left, True, phase) if left < wait else (wait, False, phase)

    async def _close(self, hop: _Hop) -> None:
        try:
            await hop.response.aclose()
        except BaseException as exc:  # pragma: no cover - best effort
            log.debug("router_plugin: closing a stream failed: %s", exc)

    async def _book(self, hop: _Hop, broke: _Broke) -> None:
        state = hop.state
        if broke.fact is not None:  # detected here: LiteLLM fired (and will fire) no event for this attempt
            await self.inst.callbacks.record_failure(state, broke.fact, broke.cool)
        log.warning("router_plugin: %s", broke.why)
        if state.get("deployment_id"):
            self.excluded.append({"deployment_id": str(state["deployment_id"]), "why": _short(broke.why, 160)})
        self.hops.append({"model": hop.model, "outcome": "broke off", "chars": hop.content_chars,
                          "why": _short(broke.why, 200)})
        if self.first_failure is None:
            self.first_failure = broke

    async def _next(self, broke: _Broke) -> _Hop:
        """The hop that takes over; raises the error that names the original failure when none can."""
        original = self.first_failure or broke
        if broke.budget or time.time() >= self.deadline:
            raise BudgetExceededError(self.model, f"{original.why}; the {self.limits.total_s:g} s budget ran out "
                                                  "before another deployment could finish the answer") from None
        if self.tool_calls:
            raise self._interrupted(original, "a tool call cannot be continued on another model")
        while True:
            continuation = bool(self.parts)
            restate = continuation and await self._takes_no_prefill()
            try:
                return await self._open(continuation, restate)
            except (QuotaExhaustedError, ChainFailedError, BudgetExceededError) as exc:
                raise self._interrupted(original, f"no other deployment could take it over ({_plain(exc)})") \
                    from exc
            except Exception as exc:
                state = self.base_md.get(METADATA_KEY) if isinstance(self.base_md.get(METADATA_KEY), dict) else {}
                if continuation and not restate and _rejects_request(exc) and state.get("deployment_id"):
                    # It refused the prefill: remember that for every worker, and ask it again the other way.
                    who = str(state.get("model") or state["deployment_id"])
                    log.info("router_plugin: %s does not take an assistant prefill (%s); continuing without one",
                             who, _describe(exc))
                    plan = self.inst.plans.by_id(str(state["deployment_id"]))
                    if plan is not None:
                        await prefill.remember_refusal(self.inst.store, plan)
                    self.restate_ids.add(str(state["deployment_id"]))
                    self._forget_failure(str(state["deployment_id"]), int(state.get("attempts") or 0))
                    self.hops.append({"model": who, "outcome": "refused the prefill", "chars": 0,
                                      "why": _short(_describe(exc), 200)})
                    continue
                if continuation and _rejects_request(exc) and state.get("deployment_id"):
                    who = str(state.get("model") or state["deployment_id"])
                    log.info("router_plugin: %s does not accept a continuation (%s)", who, _describe(exc))
                    self.no_continuation.append(who)
                    self.excluded.append({"deployment_id": str(state["deployment_id"]),
                                          "why": "does not accept a continuation"})
                    self.hops.append({"model": who, "outcome": "refused the continuation", "chars": 0,
                                      "why": _short(_describe(exc), 200)})
                    continue
                raise self._interrupted(original, f"taking it over failed too ({_describe(exc)})") from exc

    async def _takes_no_prefill(self) -> bool:
        """Whether the deployment the strategy will choose next (the first of the chain not yet out of this call)
        takes no assistant prefill: declared (``model_info.supports_assistant_prefill: false``), learnt by any
        worker (Redis), or refused in this call. A wrong guess costs little: a prefill refused is asked again the
        other way; the other way works everywhere."""
        out = {str(e.get("deployment_id")) for e in self.excluded}
        out |= {str(e.get("deployment_id")) for e in self.base_md.get(FAILED_KEY) or () if isinstance(e, Mapping)}
        router = getattr(self.inst.strategy, "router", None)
        for deployment in (router.get_model_list(model_name=self.model) or []) if router is not None else []:
            plan = self.inst.plans.plan(deployment)
            if plan.deployment_id in out:
                continue
            if plan.deployment_id in self.restate_ids or prefill.declared(deployment) is False:
                return True
            return await prefill.refuses(self.inst.store, plan)
        return False

    def _forget_failure(self, deployment_id: str, attempt: int) -> None:
        """Drop a refused prefill from this call's failure record, so the strategy may choose that deployment again
        for the continuation without one (the attempt stays counted in ``attempts`` and ``hops``)."""
        for md in (self.base_md, self.caller_md):
            failed = md.get(FAILED_KEY)
            if isinstance(failed, list):
                md[FAILED_KEY] = [e for e in failed if not (isinstance(e, Mapping) and str(e.get("deployment_id"))
                                                            == deployment_id and int(e.get("attempt") or 0) == attempt)]

    def _interrupted(self, original: _Broke, then: str) -> StreamInterruptedError:
        delivered = sum(len(p) for p in self.parts)
        text = original.why
        if delivered:
            text += f"; the caller has the first {delivered} characters"
            if self.no_continuation:
                then = f"{then}; no continuation support on: {', '.join(self.no_continuation)}"
        return StreamInterruptedError(self.model, f"{text}; {then}", original.exc)


class GuardedStream(CustomStreamWrapper):
    """What the caller iterates: the guarded chunks of every hop, as one stream (a CustomStreamWrapper, so the
    proxy streams it like LiteLLM's own)."""

    def __init__(self, first: Any, generator: Any):
        super().__init__(completion_stream=generator, model=getattr(first, "model", None),
                         custom_llm_provider=getattr(first, "custom_llm_provider", None),
                         logging_obj=first.logging_obj, _response_headers=getattr(first, "_response_headers", None))
        self._generator = generator
        hidden = getattr(first, "_hidden_params", None)
        if isinstance(hidden, dict):
            self._hidden_params = dict(hidden)
        chunks = getattr(first, "chunks", None)
        if isinstance(chunks, list):
            self.chunks = chunks

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self._generator.__anext__()

    async def aclose(self):
        self._closed = True
        await self._generator.aclose()


def _rejects_request(exc: BaseException) -> bool:
    status = getattr(exc, "status_code", None)
    return isinstance(exc, litellm.BadRequestError) or status in (400, 422)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_short(scrub(_plain(exc)), 240)}"


def _plain(exc: BaseException) -> str:
    """The exception's message without LiteLLM's repeated class-name prefixes and model-group suffix."""
    text = str(getattr(exc, "message", None) or exc).split("\nLiteLLM: model group", 1)[0]
    text = _PREFIX.sub("", text).replace("router_plugin: ", "", 1)
    return text.strip()


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


__all__ = ["FINISH_GRACE_S", "GuardedStream", "StreamInterruptedError", "install_stream_guard"]
