"""Time limits: one attempt must show signs of life quickly, and the whole call has a budget.

``router_plugin.timeouts`` (``Settings.timeouts``), all in seconds, all measured on this process's monotonic clock:

    connect_s      an attempt's TCP connect + response headers (a silent deployment is left after this)
    first_token_s  an attempt's first token, counted from the attempt's start (streams); a non-streamed reply
                   arrives with its headers, so it gets ``connect_s + first_token_s`` in all
    stream_idle_s  silence between two chunks of a stream (enforced by ``streams.py``)
    total_s        the whole call: every attempt, every fallback, every continuation, any wait for a reset

How they are enforced (the transport is LiteLLM's; the limits are ours, so they hold whatever it does):

* ``Router._acompletion`` — one attempt inside LiteLLM's retry loop — runs under an ``asyncio.timeout`` that
  starts at the headers limit and is moved to the first-token limit once the stream's headers are in: when the
  router starts reading the stream's first chunk (every provider path, openai/ included) or LiteLLM reports "first
  stream response received" (its post-call log on the groq/openrouter paths, caught by :class:`HeaderSignal`),
  both through a context variable. On expiry the attempt
  is recorded as a failure of that deployment (a short, escalating cooldown for every worker: retrying a silent
  deployment only multiplies the wait), and :class:`AttemptTimeout` sends LiteLLM's loop to the next deployment.
* Each attempt is also given a transport ``timeout`` (connect, read) as a backstop, capped by the budget. The sync
  ``Router.completion`` gets only this (no event loop to cancel on): connect ``connect_s``, read (the longest
  silence, headers included) ``connect_s + first_token_s`` for a plain reply, ``max(first_token_s,
  stream_idle_s)`` for a stream; its streams are not continued (streams.py guards ``acompletion``).
* The budget's deadline travels in the request metadata (``DEADLINE_KEY``); the strategy refuses to start an
  attempt past it, every limit above is capped by it, and :class:`BudgetExceededError` says what was tried.
* Each failed attempt is written to the request metadata as it fails (``FAILED_KEY``: deployment, attempt number,
  HTTP status), before LiteLLM's loop asks the strategy for the next one: the retry discipline reads it there.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger

from ..config import Timeouts
from ..guard.deadlines import (  # noqa: F401  (re-exported: the adapter's modules import them from here)
    DEADLINE_KEY, EXCLUDE_KEY, FAILED_KEY, AttemptClock, _short, _tried, deadline_of, remaining_s, request_metadata,
    transport_timeout,
)
from ..providers.facts import Fact, ServerError
from ..redact import scrub

log = logging.getLogger("router_plugin")

#: LiteLLM's post-call log text once a stream's response headers are in (llm_http_handler, openai_like handler).
_HEADERS_IN = "first stream response received"
_MARK = "_router_plugin_attempt_limits"


class BudgetExceededError(litellm.Timeout):
    """The call's overall budget (``timeouts.total_s``) ran out before a complete answer arrived."""

    def __init__(self, model: str, message: str):
        super().__init__(message=f"router_plugin: {scrub(message)}", model=model, llm_provider="router_plugin",
                         num_retries=0)


class AttemptTimeout(litellm.Timeout):
    """One attempt showed no headers / no first token in time; LiteLLM's loop moves to the next deployment."""

    def __init__(self, model: str, provider: str, phase: str, limit_s: float):
        super().__init__(message=f"router_plugin: {model} sent no {phase} within {limit_s:g} s", model=model,
                         llm_provider=provider or "router_plugin")
        self.phase = phase
        self.limit_s = limit_s


# --------------------------------------------------------------------------------------------- one attempt


_ATTEMPT: contextvars.ContextVar[AttemptClock | None] = contextvars.ContextVar("router_plugin_attempt", default=None)


def pause_attempt_clock() -> None:
    """Called by the strategy before it waits (max_wait_s, its turn in line): the attempt's headers / reply limits
    stop running (the call's budget does not); ``restart_attempt_clock`` starts them afresh once it has chosen."""
    clock = _ATTEMPT.get()
    if clock is not None:
        clock.pause()


def restart_attempt_clock() -> None:
    """Called by the strategy when a request waited before its deployment was chosen: the attempt's headers /
    reply limits count from now, not from before the wait (which was not the deployment's silence)."""
    clock = _ATTEMPT.get()
    if clock is not None:
        clock.restart()


class HeaderSignal(CustomLogger):
    """Tells the running attempt that its stream's response headers are in (LiteLLM's post-call log)."""

    def log_post_api_call(self, kwargs, response_obj, start_time, end_time):
        try:
            if kwargs.get("original_response") == _HEADERS_IN:
                clock = _ATTEMPT.get()
                if clock is not None:
                    clock.headers_received()
        except Exception:  # never disturb LiteLLM's logging
            pass


_SIGNAL = HeaderSignal()


def _register_signal() -> None:
    # LiteLLM calls log_post_api_call only for litellm.input_callback; the signal is inert outside our attempts.
    if not any(cb is _SIGNAL for cb in litellm.input_callback):
        litellm.input_callback.append(_SIGNAL)
    _signal_first_chunk_read()


def _signal_first_chunk_read() -> None:
    """The signal that works on every provider path: ``Router._acompletion`` reads a stream's first chunk
    (``litellm.router._aread_first_chunk``) only once ``litellm.acompletion`` has returned the stream with its
    response headers in (the openai/ path returns after the headers; the groq/openrouter paths are fetched by
    ``fetch_stream()`` just before). LiteLLM's openai/ path never logs "first stream response received", so the
    log signal alone would leave an openai/ stream under the headers limit until its first token. Wrapped once per
    process; inert outside the plugin's attempts (no attempt clock in the context)."""
    import litellm.router as router_module

    reader = getattr(router_module, "_aread_first_chunk", None)
    if reader is None or getattr(reader, _MARK, False):
        return  # a LiteLLM without it: the log signal still covers the groq/openrouter paths

    async def _aread_first_chunk(stream, *args, **kwargs):
        clock = _ATTEMPT.get()
        if clock is not None:
            clock.headers_received()
        return await reader(stream, *args, **kwargs)

    setattr(_aread_first_chunk, _MARK, True)
    router_module._aread_first_chunk = _aread_first_chunk


RecordFailure = Callable[[Mapping[str, Any], Fact, bool], Awaitable[None]]


def install_attempt_limits(router: Any, limits: Timeouts, record_failure: RecordFailure,
                           state_key: str = "router_plugin") -> None:
    """Run every ``router._acompletion`` (one attempt) under the headers / first-token limits and the budget.

    ``record_failure(state, fact, cool)`` books a timed-out attempt (the callbacks never hear of a cancelled one).
    """
    if router.__dict__.get(_MARK):
        return
    _register_signal()
    original = router._acompletion

    async def _acompletion(model: str, messages: list, **kwargs: Any):
        metadata = request_metadata(kwargs)
        stream = bool(kwargs.get("stream"))
        loop = asyncio.get_running_loop()
        now = loop.time()
        left = remaining_s(metadata)
        if left is not None and left <= 0:
            raise BudgetExceededError(model, f"no complete answer within the {limits.total_s:g} s budget "
                                             f"({_tried(metadata)})")
        if "timeout" not in kwargs:
            kwargs["timeout"] = transport_timeout(limits, stream, left)
        first_token = limits.first_token_s if stream else limits.connect_s + limits.first_token_s
        clock = AttemptClock(stream=stream, started=now, headers_by=now + min(limits.connect_s, first_token),
                             first_token_by=now + first_token, budget_by=None if left is None else now + left)
        state = metadata.get(state_key) if isinstance(metadata.get(state_key), dict) else None
        attempts_before = int(state.get("attempts", 0)) if state is not None else 0
        token = _ATTEMPT.set(clock)
        try:
            try:
                async with asyncio.timeout_at(clock.limit(clock.headers_by if stream else clock.first_token_by)) \
                        as scope:
                    clock.scope = scope
                    result = await original(model=model, messages=messages, **kwargs)
            except TimeoutError:
                if clock.scope is None or not clock.scope.expired():
                    raise
                await _expired(model, metadata, state_key, attempts_before, clock, record_failure, limits.total_s)
                raise AssertionError("unreachable")  # pragma: no cover
        except Exception as exc:
            _note_failure(metadata, state_key, attempts_before, exc)
            raise
        finally:
            _ATTEMPT.reset(token)
        if stream:
            state = metadata.get(state_key)
            if isinstance(state, dict):
                # streams.py keeps the first-token limit for a stream whose first chunk carried no content
                state["first_token_by"] = time.time() + max(0.0, clock.limit(clock.first_token_by) - loop.time())
        return result

    router._acompletion = _acompletion
    router.__dict__[_MARK] = True


async def _expired(model: str, metadata: dict, state_key: str, attempts_before: int, clock: AttemptClock,
                   record_failure: RecordFailure, total_s: float) -> None:
    state = metadata.get(state_key)
    chosen = isinstance(state, dict) and int(state.get("attempts", 0)) > attempts_before
    deployment = str(state.get("model")) if chosen else model
    provider = deployment.split("/", 1)[0] if "/" in deployment else ""
    if clock.cut_by_budget:
        if chosen:  # not the deployment's fault: count the attempt, set nothing aside
            await record_failure(state, ServerError(None, "cut short by the call's time budget"), False)
        raise BudgetExceededError(model, f"no complete answer within the {total_s:g} s budget ({_tried(metadata)}; "
                                         f"{deployment}: still waiting for its {clock.phase})")
    limit = clock.phase_limit_s
    if chosen:
        log.warning("router_plugin: %s sent no %s within %g s; trying the next deployment", deployment,
                    clock.phase, limit)
        await record_failure(state, ServerError(None, f"no {clock.phase} within {limit:g} s"), True)
    raise AttemptTimeout(deployment, provider, clock.phase, limit)


def _note_failure(metadata: dict, state_key: str, attempts_before: int, exc: BaseException) -> None:
    state = metadata.get(state_key)
    if not isinstance(state, dict) or int(state.get("attempts", 0)) <= attempts_before:
        return  # the strategy refused before choosing anything: no deployment failed
    status = getattr(exc, "status_code", None)
    entry = {"deployment_id": str(state.get("deployment_id")), "model": str(state.get("model")),
             "attempt": int(state.get("attempts", 0)), "status": status if isinstance(status, int) else None,
             "type": type(exc).__name__, "text": _short(scrub(getattr(exc, "message", None) or exc), 300)}
    metadata[FAILED_KEY] = [*(metadata.get(FAILED_KEY) or ()), entry]


__all__ = [
    "AttemptTimeout", "BudgetExceededError", "DEADLINE_KEY", "EXCLUDE_KEY", "FAILED_KEY", "HeaderSignal",
    "deadline_of", "install_attempt_limits", "remaining_s", "request_metadata", "transport_timeout",
]
