"""LiteLLM callbacks: settle reservations, calibrate from provider headers, record failures for every worker.

    success -> settle the token estimate to the real ``usage``; calibrate counters from rate-limit headers
    failure -> classify (providers/) and record until the *real* reset:
               OpenRouter per-minute 429 -> account pool blocked to the minute's end
               OpenRouter per-day 429    -> account pool blocked to UTC midnight
               upstream-provider 429     -> only that model cooled (short, escalating)
               404 gone / model_not_found -> model quarantined for hours (logged loudly)
               402                       -> OpenRouter pool blocked, loud credit error
               5xx / timeout / unknown   -> short escalating cooldown of that model
               400 / 401 / context       -> nothing shared: it is this request's problem
           (LiteLLM 1.108 already raises an OpenRouter "HTTP 200 with an error body" as APIError 502, so it
           arrives here as a failure, not as a success.)
           tokens are refunded; the request itself stays counted (providers count failed attempts).
           A first HTTP 500 of a deployment in a request sets nothing aside: the strategy gives it one retry.
           A failure inside a stream that had started (an in-band error chunk) is classified as a stream chunk:
           a bare "Rate limit exceeded" there means that model is busy, not that the account's minute is spent.
    attempts that timed out or whose stream broke off are booked by timeouts.py / streams.py through
    ``record_failure`` (LiteLLM fires no event for an attempt the plugin abandoned); an attempt is booked once.
    A success closes the circuit: the model's strike count is cleared, so its next failure starts the
    cooldown from the base again (circuit.py).

The decisions (what to settle, refund, set aside and for how long) are ``router_plugin.booking`` (pure); this module
reads LiteLLM's events into plain values for it and carries its answers out through the store.

LiteLLM keeps callbacks in process-wide lists, capped at ``MAX_CALLBACKS`` (100): one CustomLogger per Router
would fill them in a service that builds Routers over and over (after which LiteLLM drops new ones with a warning,
and the plugin would stop settling), and would keep every old Router alive. So the plugin puts one ``Dispatch``
into those lists per process; each Router's ``QuotaCallbacks`` registers with it, weakly, under the owner id the
strategy writes into every request's metadata, and gets exactly the events of the requests it routed.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from .. import booking, providers
from .._plans import PlanBook
from ..circuit import close_circuit
from ..config import Settings
from ..events import Events
from ..limits import DeploymentPlan
from ..providers.facts import Fact
from ..redact import scrub
from ..store import QuotaStore, Reservation
from ..usage import usage_book
from .strategy import METADATA_KEY
from .timeouts import FAILED_KEY

log = logging.getLogger("router_plugin")


def _flush_litellm_callbacks_before_store_exit() -> None:
    """At exit LiteLLM runs the success callbacks still queued (its logging worker's atexit flush); they defer
    settles (store/batch.py), so the store's exit flush runs that first, whichever atexit handler comes first."""
    from ..store import BEFORE_EXIT

    try:
        from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
    except ImportError:  # pragma: no cover - another LiteLLM line: its own handler still runs
        return
    flush = getattr(GLOBAL_LOGGING_WORKER, "_flush_on_exit", None)
    if flush is not None and flush not in BEFORE_EXIT:
        BEFORE_EXIT.append(flush)


class QuotaCallbacks(CustomLogger):
    def __init__(self, settings: Settings, store: QuotaStore, plans: PlanBook, owner: str,
                 events: Events | None = None):
        super().__init__()
        keep_reply_headers()  # Groq's plain replies carry x-ratelimit-* too: calibrate from every reply
        _flush_litellm_callbacks_before_store_exit()
        self.events = events if events is not None else Events()
        self.settings = settings
        self.store = store
        self.plans = plans
        self.owner = owner

    # ---- success -------------------------------------------------------------------------------------------

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        state, plan = self._ours(kwargs)
        if plan is None or state.get("booked"):  # a stream the plugin judged broken is no completion
            return
        try:
            reservation = booking.reservation(plan, state)
            total = _total_tokens(response_obj, reservation)
            self.events.succeeded(plan, total)
            usage_book(self.store).served(plan, _metadata_of(kwargs))  # status: use per priority / key (in memory)
            headers = _success_headers(kwargs, response_obj)
            seen = providers.remaining(plan.provider, headers, None, time.time()) if headers else []
            if reservation is not None:  # real tokens + headers: deferred, carried by a later round trip (batch.py)
                self.store.settle_later(reservation, total, seen)
            elif seen:
                self.store.calibrate_later(plan, seen)
            if state.get("strikes"):  # the reservation saw recent failures of this model: clear them
                await close_circuit(self.store, plan)
        except Exception as exc:  # never let bookkeeping break a served request
            log.warning("router_plugin: could not settle %s: %s", plan.model, scrub(exc))

    # ---- failure -------------------------------------------------------------------------------------------

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        state, plan = self._ours(kwargs)
        if plan is None or state.get("booked"):
            return
        failed_id = ((kwargs.get("litellm_params") or {}).get("model_info") or {}).get("id")
        if failed_id and str(failed_id) != plan.deployment_id and self.plans.by_id(str(failed_id)) is not None:
            # This event arrived after the request moved on to another deployment: book the one that failed,
            # and leave the state (the current attempt's) alone.
            plan, state = self.plans.by_id(str(failed_id)), {"attempts": state.get("attempts")}
        state["booked"] = True
        exc = kwargs.get("exception")
        now = time.time()
        try:
            metadata = _metadata_of(kwargs)
            # LiteLLM failed before handing the attempt to the provider (no pre-call mark): it never left, so it
            # costs nothing (requests refunded too) and says nothing about the deployment (booking.failure).
            verdict = booking.failure(
                plan, state, handed_off=bool(kwargs.get("api_call_start_time")),
                detail=scrub(getattr(exc, "message", None) or exc),
                classify=lambda: providers.classify_exception(plan.provider or "", exc, now),
                stream_started=bool(kwargs.get("stream")) and kwargs.get("completion_start_time") is not None,
                failures=metadata.get(FAILED_KEY), previous=_previous_ids(metadata))
            state["last_failure"] = verdict.label
            self.events.failed(plan, verdict.fact)
            if verdict.note:
                log.info("router_plugin: %s", verdict.note)
            if verdict.refund_requests:
                reservation = booking.reservation(plan, state)
                if reservation is not None:
                    await self.store.refund(reservation, requests=True)
                return
            if verdict.set_aside:
                await self._record(plan, verdict.fact, now)
            seen = providers.exception_remaining(plan.provider or "", exc, now)
            if seen:
                self.store.calibrate_later(plan, seen)
            reservation = booking.reservation(plan, state)
            if reservation is not None:
                await self.store.refund(reservation)
        except Exception as err:
            log.warning("router_plugin: could not record the failure of %s: %s", plan.model, scrub(err))

    async def record_failure(self, state: Mapping[str, Any], fact: Fact, cool: bool = True) -> None:
        """Book an attempt the plugin itself gave up on (timed out, stream broke off); once per attempt.

        The attempt stays counted (it reached the provider); its tokens are refunded; ``cool`` sets the model
        aside for every worker like any other failure of that kind.
        """
        if not isinstance(state, dict) or state.get("owner") != self.owner or state.get("booked"):
            return
        plan = self.plans.by_id(str(state.get("deployment_id")))
        if plan is None:
            return
        state["booked"] = True
        state["last_failure"] = type(fact).__name__
        try:
            self.events.failed(plan, fact)
            if cool:
                await self._record(plan, fact)
            reservation = booking.reservation(plan, state)
            if reservation is not None:
                await self.store.refund(reservation)
        except Exception as err:
            log.warning("router_plugin: could not record the failure of %s: %s", plan.model, scrub(err))

    async def record_completion(self, state: Mapping[str, Any], total_tokens: int) -> None:
        """Book a stream the plugin ended itself after its finish chunk (no end of body: LiteLLM fires nothing)."""
        if not isinstance(state, dict) or state.get("owner") != self.owner or state.get("booked"):
            return
        plan = self.plans.by_id(str(state.get("deployment_id")))
        if plan is None:
            return
        state["booked"] = True  # a late LiteLLM event for this attempt is ignored
        try:
            reservation = booking.reservation(plan, state)
            total = booking.tokens_to_settle(total_tokens, reservation)
            self.events.succeeded(plan, total)
            if reservation is not None:
                self.store.settle_later(reservation, total)
            if state.get("strikes"):  # the reservation saw recent failures of this model: clear them
                await close_circuit(self.store, plan)
        except Exception as exc:
            log.warning("router_plugin: could not settle %s: %s", plan.model, scrub(exc))

    async def _record(self, plan: DeploymentPlan, fact: Fact, classified_at: float | None = None) -> None:
        """Set the deployment aside as the fault calls for (booking.set_aside), for every worker."""
        aside = booking.set_aside(plan, fact, self.settings.cooldowns, classified_at)
        if aside.clamped:  # a provider value no limit can mean, bounded in providers/bounds.py: say so, count it
            log.warning("router_plugin: %s: %s", plan.model, aside.clamped)
            count = getattr(self.store, "count_clamped", None)
            if count is not None:
                await count(int(time.time() // 86_400))
        for action in aside.actions:
            if isinstance(action, booking.Block):
                await self.store.block(plan, action.counter, action.until_ms, action.reason, for_ms=action.for_ms)
                continue
            strikes = await self.store.cool(plan, action.reason, action.base_s, action.max_s,
                                            escalate=action.escalate, until_ms=action.until_ms)
            if action.error_if_first and strikes == 1:  # once per quarantine, not per in-flight request that hit it
                log.error("router_plugin: %s", action.error_if_first)
        if aside.warning:
            log.warning("router_plugin: %s", aside.warning)
        if aside.error:
            log.error("router_plugin: %s", aside.error)

    def _ours(self, kwargs: Mapping[str, Any]) -> tuple[dict, DeploymentPlan | None]:
        params = kwargs.get("litellm_params") or {}
        metadata = params.get("metadata") or kwargs.get("metadata") or {}
        state = metadata.get(METADATA_KEY) if isinstance(metadata, Mapping) else None
        if not isinstance(state, dict) or state.get("owner") != self.owner:
            return {}, None
        return state, self.plans.by_id(str(state.get("deployment_id")))


class Dispatch(CustomLogger):
    """The plugin's one entry in LiteLLM's callback lists: hands each event to the Router that routed it."""

    def __init__(self) -> None:
        super().__init__()
        self._by_owner: weakref.WeakValueDictionary[str, QuotaCallbacks] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def register(self, callbacks: QuotaCallbacks) -> None:
        """Deliver the events of ``callbacks.owner``'s requests to ``callbacks`` while it is alive."""
        import litellm

        with self._lock:
            self._by_owner[callbacks.owner] = callbacks
            # Checked on every install (a test or an app may have cleared LiteLLM's lists). Not through
            # logging_callback_manager: it refuses lists that are full, and every stock Router adds methods of its
            # own to the async lists and is never freed, so a process that built 100 Routers has no room left.
            # Without this one entry nothing is settled and no failure is recorded.
            for name in ("callbacks", "_async_success_callback", "_async_failure_callback"):
                registered = getattr(litellm, name)
                if self not in registered:
                    registered.append(self)

    def _target(self, kwargs: Mapping[str, Any]) -> QuotaCallbacks | None:
        state = _metadata_of(kwargs).get(METADATA_KEY)
        owner = state.get("owner") if isinstance(state, Mapping) else None
        return self._by_owner.get(owner) if isinstance(owner, str) else None

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        target = self._target(kwargs)
        if target is not None:
            await target.async_log_success_event(kwargs, response_obj, start_time, end_time)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        target = self._target(kwargs)
        if target is not None:
            await target.async_log_failure_event(kwargs, response_obj, start_time, end_time)


DISPATCH = Dispatch()


def _metadata_of(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    params = kwargs.get("litellm_params") or {}
    metadata = params.get("metadata") or kwargs.get("metadata") or {}
    return metadata if isinstance(metadata, Mapping) else {}


def _previous_ids(metadata: Mapping[str, Any]) -> list:
    """The deployments LiteLLM's breadcrumbs (``previous_models``, sync path) name as tried in this request."""
    return [e.get("deployment_id") for e in metadata.get("previous_models") or () if isinstance(e, Mapping)]


def _total_tokens(response_obj: Any, reservation: Reservation | None) -> int:
    """The reply's ``usage.total_tokens`` as booking.tokens_to_settle has it (the estimate when there is none)."""
    usage = getattr(response_obj, "usage", None)
    return booking.tokens_to_settle(getattr(usage, "total_tokens", None) if usage is not None else None, reservation)


def _success_headers(kwargs: Mapping[str, Any], response_obj: Any) -> dict | None:
    headers = kwargs.get("response_headers")
    if headers:
        return dict(headers)
    hidden = getattr(response_obj, "_hidden_params", None) or {}
    extra = hidden.get("additional_headers") if isinstance(hidden, Mapping) else None
    if not extra:
        return None
    # "llm_provider-x-ratelimit-..." keys carry the raw provider headers.
    return {k[len("llm_provider-"):]: v for k, v in extra.items() if str(k).startswith("llm_provider-")} or None


# ---- adapter: the provider's headers on plain OpenAI-like (Groq) replies ------------------------------------------

def keep_reply_headers() -> None:
    """Keep the HTTP headers of plain (non-streamed) OpenAI-like replies, as LiteLLM already does for streams.

    LiteLLM 1.108 builds Groq's non-streamed ``ModelResponse`` in ``OpenAILikeChatConfig._transform_response`` and
    drops the ``httpx.Response`` headers there (litellm-1.108-notes §3), so ``x-ratelimit-*`` — Groq's count of the
    organisation's requests/day and tokens/min, other clients included — never reached the success callback. This
    wraps that one static method (once per process): the result gets the headers the same way LiteLLM stores them
    for other providers (``hidden_params["additional_headers"]["llm_provider-..."]``), which
    :func:`_success_headers` reads. The response is otherwise untouched; any failure leaves LiteLLM's result as is.
    """
    try:
        from litellm.litellm_core_utils.core_helpers import set_provider_response_headers_in_hidden_params
        from litellm.llms.openai_like.chat.transformation import OpenAILikeChatConfig
    except ImportError:  # another LiteLLM layout: streams still calibrate, plain replies do not
        return
    current = OpenAILikeChatConfig.__dict__.get("_transform_response")
    original = getattr(current, "__func__", current)
    if original is None or getattr(original, "_router_plugin_headers", False):
        return

    def _transform_response(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        try:
            response = kwargs.get("response", args[1] if len(args) > 1 else None)
            headers = getattr(response, "headers", None)
            # Only the requests headers (the organisation's requests/day): the tokens ones were computed when the
            # request was admitted, with its whole max_tokens reserved; the tokens are settled from ``usage``.
            kept = {k: v for k, v in (headers or {}).items()
                    if str(k).lower().startswith("x-ratelimit-") and str(k).lower().endswith("-requests")}
            if kept:
                set_provider_response_headers_in_hidden_params(result, kept)
        except Exception as exc:  # never break a served reply for bookkeeping
            log.debug("router_plugin: could not keep reply headers: %s", exc)
        return result

    _transform_response._router_plugin_headers = True  # type: ignore[attr-defined]
    OpenAILikeChatConfig._transform_response = staticmethod(_transform_response)  # type: ignore[method-assign]
