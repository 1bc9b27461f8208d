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

The decisions above are the state machine in ``router_plugin.guard.stream`` (pure, fed plain values); this module
reads LiteLLM's chunks and exceptions into those values, opens each hop through the router, and raises the errors.

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
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import litellm
from litellm.litellm_core_utils.streaming_handler import CustomStreamWrapper

from .. import prefill
from ..guard.stream import FINISH_GRACE_S, NEXT, RESTATE, Broke, Hop, Stop, StreamCall
from ..redact import scrub
from .strategy import EXCLUDE_KEY, METADATA_KEY, ChainFailedError, QuotaExhaustedError
from .timeouts import DEADLINE_KEY, FAILED_KEY, BudgetExceededError, install_attempt_limits, request_metadata

log = logging.getLogger("router_plugin")

_INNER = "_router_plugin_inner"
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
# The decisions live in guard/stream.py (StreamCall); here LiteLLM's chunks, exceptions and metadata are turned
# into plain values for it, and its answers into LiteLLM calls and errors.


@dataclass
class _Hop:
    """One stream of the call: a router.acompletion(stream=True) that returned, and the machine's view of it."""

    response: Any
    metadata: dict
    inner: Any
    run: Hop

    @property
    def state(self) -> dict:
        value = self.metadata.get(METADATA_KEY)
        return value if isinstance(value, dict) else {}


class _Call:
    def __init__(self, original: Any, inst: Any, model: str, messages: list, kwargs: dict):
        self.original = original
        self.inst = inst
        self.model = model
        self.messages = messages
        self.kwargs = kwargs
        self.limits = inst.settings.timeouts
        self.caller_md = request_metadata(kwargs)
        self.deadline = time.time() + self.limits.total_s
        self.machine = StreamCall(model, messages, self.limits, self.deadline)
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
        md[METADATA_KEY] = {"attempts": self.machine.attempts}
        md[EXCLUDE_KEY] = list(self.machine.excluded)
        md[DEADLINE_KEY] = self.deadline
        kwargs = dict(self.kwargs)
        kwargs["litellm_metadata" if self.caller_md is self.kwargs.get("litellm_metadata") else "metadata"] = md
        messages, caps = self.machine.request(continuation, restate, kwargs)
        kwargs.update(caps)
        self.base_md = md
        lenient = _LENIENT.set(True)  # the router reads the first chunk inside this call
        try:
            response = await self.original(model=self.model, messages=messages, stream=True, **kwargs)
        finally:
            _LENIENT.reset(lenient)
            state = md.get(METADATA_KEY)
            if isinstance(state, dict):
                self.machine.attempts = max(self.machine.attempts, int(state.get("attempts", 0)))
            self._publish(md)
        state = md.get(METADATA_KEY) if isinstance(md.get(METADATA_KEY), dict) else {}
        first_by = state.get("first_token_by")
        return _Hop(response, md, getattr(response, _INNER, None),
                    Hop(state, float(first_by) if isinstance(first_by, (int, float)) else None))

    def _publish(self, md: Mapping[str, Any]) -> None:
        """What the caller reads in ``metadata["router_plugin"]``: the deployment serving now, every attempt."""
        for key in _KEYS_BACK:
            if key in md:
                self.caller_md[key] = md[key]
        self.caller_md[METADATA_KEY] = self.machine.summary(md.get(METADATA_KEY))

    async def _run(self, hop: _Hop):
        try:
            while True:
                try:
                    async for chunk in self._relay(hop):
                        yield chunk
                    self.machine.complete(hop.run)
                    self._publish(hop.metadata)
                    return
                except Broke as broke:
                    await self._close(hop)
                    await self._book(hop, broke)
                    hop = await self._next(broke)
        finally:
            await self._close(hop)

    async def _relay(self, hop: _Hop):
        iterator = hop.response.__aiter__()
        run = hop.run
        while True:
            wait = self.machine.wait(run, time.time())
            lenient = _LENIENT.set(True)
            try:
                async with asyncio.timeout(wait.seconds) as scope:
                    chunk = await iterator.__anext__()
            except StopAsyncIteration:
                self.machine.ended(run)
                return
            except TimeoutError as exc:
                if not scope.expired():
                    raise self.machine.failed(run, exc, timed_out=True) from None
                self.machine.silent(run, wait)  # raises Broke unless the hop had finished
                # LiteLLM fires its success event only at the end of the body: book the completion here.
                await self.inst.callbacks.record_completion(hop.state, run.usage_tokens)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the transport or an in-band error chunk; LiteLLM books these itself
                raise self.machine.failed(run, exc) from None
            finally:
                _LENIENT.reset(lenient)
            self.machine.chunk(run, **_read(chunk, hop.inner))
            yield chunk

    async def _close(self, hop: _Hop) -> None:
        try:
            await hop.response.aclose()
        except BaseException as exc:  # pragma: no cover - best effort
            log.debug("router_plugin: closing a stream failed: %s", exc)

    async def _book(self, hop: _Hop, broke: Broke) -> None:
        if broke.fact is not None:  # detected here: LiteLLM fired (and will fire) no event for this attempt
            await self.inst.callbacks.record_failure(hop.state, broke.fact, broke.cool)
        self.machine.broke(hop.run, broke)

    async def _next(self, broke: Broke) -> _Hop:
        """The hop that takes over; raises the error that names the original failure when none can."""
        original = self.machine.first_failure or broke
        step = self.machine.after(broke, time.time())
        if isinstance(step, Stop) and step.budget:
            raise BudgetExceededError(self.model, step.text) from None
        if isinstance(step, Stop):
            raise self._error(step)
        while True:
            continuation = bool(self.machine.parts)
            restate = continuation and await self._takes_no_prefill()
            try:
                return await self._open(continuation, restate)
            except (QuotaExhaustedError, ChainFailedError, BudgetExceededError) as exc:
                raise self._error(self.machine.nobody_took_over(original, exc)) from exc
            except Exception as exc:
                state = self.base_md.get(METADATA_KEY) if isinstance(self.base_md.get(METADATA_KEY), dict) else {}
                verdict = self.machine.take_over_failed(original, exc, state, continuation=continuation,
                                                        restate=restate, rejects=_rejects_request(exc))
                if verdict == RESTATE:
                    # It refused the prefill: remember that for every worker, and ask it again the other way.
                    plan = self.inst.plans.by_id(str(state["deployment_id"]))
                    if plan is not None:
                        await prefill.remember_refusal(self.inst.store, plan)
                    self.machine.forget_failure((self.base_md, self.caller_md), str(state["deployment_id"]),
                                                int(state.get("attempts") or 0))
                    continue
                if verdict == NEXT:
                    continue
                raise self._error(verdict) from exc

    async def _takes_no_prefill(self) -> bool:
        """Whether the deployment the strategy will choose next (the first of the chain not yet out of this call)
        takes no assistant prefill: declared (``model_info.supports_assistant_prefill: false``), learnt by any
        worker (Redis), or refused in this call. A wrong guess costs little: a prefill refused is asked again the
        other way; the other way works everywhere."""
        out = self.machine.out_of_call(self.base_md.get(FAILED_KEY) or ())
        router = getattr(self.inst.strategy, "router", None)
        for deployment in (router.get_model_list(model_name=self.model) or []) if router is not None else []:
            plan = self.inst.plans.plan(deployment)
            if plan.deployment_id in out:
                continue
            if plan.deployment_id in self.machine.restate_ids or prefill.declared(deployment) is False:
                return True
            return await prefill.refuses(self.inst.store, plan)
        return False

    def _error(self, stop: Stop) -> StreamInterruptedError:
        return StreamInterruptedError(self.model, stop.text, stop.exc)


def _read(chunk: Any, inner: Any) -> dict:
    """A LiteLLM stream chunk as the machine's plain values (``inner``: LiteLLM's inner wrapper, which alone keeps
    the provider's own finish reason on 1.108; None where the line raises on a stream without one itself)."""
    choice = chunk.choices[0] if getattr(chunk, "choices", None) else None
    finish = getattr(choice, "finish_reason", None) if choice is not None else None
    said = None
    if finish is not None and inner is not None:
        said = getattr(inner, "received_finish_reason", None) or getattr(inner, "intermittent_finish_reason", None)
    usage = getattr(chunk, "usage", None)
    total = getattr(usage, "total_tokens", None) if usage is not None else None
    delta = getattr(choice, "delta", None) if choice is not None else None
    return {"content": getattr(delta, "content", None) if delta is not None else None, "finish": finish,
            "provider_finish": said, "finish_known": inner is not None,
            "usage_tokens": total if isinstance(total, int) else None,
            "tool_calls": bool(getattr(delta, "tool_calls", None))}

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


__all__ = ["FINISH_GRACE_S", "GuardedStream", "StreamInterruptedError", "install_stream_guard"]
