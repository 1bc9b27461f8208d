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

from .. import providers
from .._plans import PlanBook
from ..circuit import close_circuit
from ..config import Settings
from ..events import Events
from ..limits import DeploymentPlan
from ..providers.facts import (
    CreditsExhausted,
    Exhausted,
    Fact,
    ModelBusy,
    ModelGone,
    Rejected,
    ServerError,
    Unknown,
)
from ..redact import scrub
from ..store import QuotaStore, Reservation
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
            reservation = _reservation(plan, state)
            total = _total_tokens(response_obj, reservation.tokens if reservation else 0)
            self.events.succeeded(plan, total)
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
            if _unsent(state, kwargs):
                # LiteLLM failed before handing the attempt to the provider (no pre-call mark): it never left, so
                # it costs nothing (requests refunded too) and says nothing about the deployment.
                detail = scrub(getattr(exc, "message", None) or exc)
                state["last_failure"] = "Unsent"
                self.events.failed(plan, Rejected(None, f"not sent: {detail}"))
                log.info("router_plugin: %s failed before the request was sent (%s); refunded, nothing set aside",
                         plan.model, detail)
                reservation = _reservation(plan, state)
                if reservation is not None:
                    await self.store.refund(reservation, requests=True)
                return
            fact = providers.classify_exception(plan.provider or "", exc, now)
            if kwargs.get("stream") and kwargs.get("completion_start_time") is not None:
                fact = _in_stream(fact)  # the stream had started: an in-band error chunk, not an HTTP status
            state["last_failure"] = type(fact).__name__
            self.events.failed(plan, fact)
            if _first_500(fact, plan, _metadata_of(kwargs), int(state.get("attempts") or 0)):
                log.info("router_plugin: %s answered 500; one retry on it before it is set aside", plan.model)
            else:
                await self._record(plan, fact, now)
            seen = providers.exception_remaining(plan.provider or "", exc, now)
            if seen:
                self.store.calibrate_later(plan, seen)
            reservation = _reservation(plan, state)
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
            reservation = _reservation(plan, state)
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
            reservation = _reservation(plan, state)
            total = total_tokens if total_tokens > 0 else (reservation.tokens if reservation else 0)
            self.events.succeeded(plan, total)
            if reservation is not None:
                self.store.settle_later(reservation, total)
            if state.get("strikes"):  # the reservation saw recent failures of this model: clear them
                await close_circuit(self.store, plan)
        except Exception as exc:
            log.warning("router_plugin: could not settle %s: %s", plan.model, scrub(exc))

    async def _record(self, plan: DeploymentPlan, fact: Fact, classified_at: float | None = None) -> None:
        cd = self.settings.cooldowns
        clamped = getattr(fact, "clamped", "")
        if clamped:  # a provider value no limit can mean, bounded in providers/bounds.py: say so, count it
            log.warning("router_plugin: %s: %s", plan.model, clamped)
            count = getattr(self.store, "count_clamped", None)
            if count is not None:
                await count(int(time.time() // 86_400))
        if isinstance(fact, Exhausted):
            counter = next((c for c in plan.counters if c.limit.name == fact.limit), None)
            until_ms = int(fact.until * 1000)
            # Groq states its resets as waits ("7.66s", retry-after): recorded as a duration from Redis TIME, so a
            # worker whose clock is off blocks the same window as every other. OpenRouter's reset is an absolute
            # time (epoch ms from its own clock) and is recorded as given.
            for_ms = 0
            if plan.provider == "groq" and classified_at is not None:
                for_ms = max(1, int((fact.until - classified_at) * 1000))
            if fact.model_only or counter is None:
                await self.store.cool(plan, f"{fact.limit} limit: {fact.detail}", for_ms / 1000, for_ms / 1000,
                                      escalate=False, until_ms=0 if for_ms else until_ms)
            else:
                await self.store.block(plan, counter, until_ms, "exhausted (provider 429)", for_ms=for_ms)
            log.warning("router_plugin: %s exhausted %s until %s: %s", plan.model, fact.limit,
                        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(fact.until)), fact.detail)
        elif isinstance(fact, (ModelBusy, ServerError)) and _stated_wait(fact) is not None:
            # The provider named the wait (Retry-After): set the model aside for exactly that long (no doubling),
            # bounded by that kind's longest cooldown.
            bound = cd.busy_max_s if isinstance(fact, ModelBusy) else cd.server_error_max_s
            wait = min(_stated_wait(fact), bound)
            await self.store.cool(plan, f"{'busy upstream' if isinstance(fact, ModelBusy) else 'failing'}: "
                                        f"{fact.detail} (retry after {wait:g} s)", wait, wait, escalate=False)
        elif isinstance(fact, ModelBusy):
            await self.store.cool(plan, f"busy upstream: {fact.detail}", cd.busy_s, cd.busy_max_s)
        elif isinstance(fact, ModelGone):
            strikes = await self.store.cool(plan, f"quarantined: {fact.detail}", cd.gone_s, cd.gone_s, escalate=False)
            if strikes == 1:  # once per quarantine, not once per in-flight request that hit it
                log.error("router_plugin: %s is gone (%s); quarantined for %.0f h for every worker — "
                          "remove it from the config", plan.model, fact.detail, cd.gone_s / 3600)
        elif isinstance(fact, CreditsExhausted):
            for counter in plan.counters:
                await self.store.block(plan, counter, 0, "account balance negative (402)",
                                       for_ms=int(cd.credits_s * 1000))
            log.error("router_plugin: OpenRouter account balance is negative (402: %s); every :free model of this "
                      "key refuses until credits are added — pool blocked for %.0f s", fact.detail, cd.credits_s)
        elif isinstance(fact, (ServerError, Unknown)):
            await self.store.cool(plan, f"failing: {fact.detail}", cd.server_error_s, cd.server_error_max_s)
        # ContextTooLong, RequestTooLarge, Rejected: this request's own problem, nothing to share.

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


def _unsent(state: Mapping[str, Any], kwargs: Mapping[str, Any]) -> bool:
    """The attempt failed before LiteLLM handed it to the provider: the strategy marked it ``sent=False`` when it
    chose it and LiteLLM's pre-call log (``strategy.SentSignal``) never marked it sent; LiteLLM's own record of
    the hand-off (``api_call_start_time``) agrees."""
    return "sent" in state and state.get("sent") is not True and not kwargs.get("api_call_start_time")


def _first_500(fact: Fact, plan: DeploymentPlan, metadata: Mapping[str, Any], attempt: int) -> bool:
    """An HTTP 500 with no earlier failure of this deployment in this request: the strategy retries it once."""
    if not (isinstance(fact, ServerError) and fact.status == 500):
        return False
    own = metadata.get(FAILED_KEY)
    if isinstance(own, (list, tuple)):  # the plugin's record (async path), numbered by attempt
        return not any(isinstance(e, Mapping) and str(e.get("deployment_id")) == plan.deployment_id
                       and int(e.get("attempt") or 0) < attempt for e in own)
    for entry in metadata.get("previous_models") or ():  # LiteLLM's breadcrumbs (sync path)
        if isinstance(entry, Mapping) and str(entry.get("deployment_id")) == plan.deployment_id:
            return False
    return True


def _stated_wait(fact: Fact) -> float | None:
    """The wait a provider stated for a busy / failing model (Retry-After), in seconds; None when it named none."""
    wait = getattr(fact, "retry_after", None)
    return float(wait) if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0 else None


def _in_stream(fact: Fact) -> Fact:
    """A 429 inside a started stream names no pool unless it says so (providers.md §1.3 mid-stream example):
    the model is busy, as ``providers.classify_stream_chunk`` has it — the account's minute is not spent."""
    if isinstance(fact, Exhausted) and not fact.model_only and "free-models-per" not in fact.detail:
        return ModelBusy(fact.detail)
    return fact


def _reservation(plan: DeploymentPlan, state: Mapping[str, Any]) -> Reservation | None:
    if not state.get("metered"):
        return None
    return Reservation(plan, int(state.get("tokens", 0)), int(state.get("reserved_at_ms", 0)))


def _total_tokens(response_obj: Any, fallback: int) -> int:
    """Real usage; a missing or zero usage keeps the estimate (LiteLLM drops Groq's ``x_groq.usage`` on
    streams without ``stream_options.include_usage``: settling to 0 would under-count)."""
    usage = getattr(response_obj, "usage", None)
    total = getattr(usage, "total_tokens", None) if usage is not None else None
    if isinstance(total, int) and total > 0:
        return total
    return fallback


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
