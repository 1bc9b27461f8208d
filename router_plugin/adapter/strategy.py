"""The routing strategy: walk the model group's chain in config order, reserve atomically, take the first that fits.

A deployment is skipped when it failed earlier in this request, cannot hold the prompt (context window), or its
reservation is refused (a counter is full, the pool is blocked until the provider's reset, the model is cooling
down or quarantined). When nothing fits: wait for the earliest reset if ``max_wait_s`` allows, else refuse at once
with a ``QuotaExhaustedError`` (a ``litellm.RateLimitError``, HTTP 429 through the proxy) that names every
exhausted pool and when it comes back.

What "failed earlier in this request" means (the retry discipline, see retry.py):

* HTTP 500 once: the same deployment gets one more attempt (a second 500 sets it aside);
* 429: not retried at once; when nothing else in the chain can serve and its recorded reset (the provider's
  Retry-After) is at most ``RETRY_AFTER_BOUND_S`` away (or ``max_wait_s``, if larger) and inside the call's budget,
  the plugin waits for it and tries it again;
* 400 context length: never the same model again, nor any deployment whose context window is no larger;
* anything else (5xx, timeouts, a stream that broke off — streams.py adds those): not again in this request.

When every deployment is out because it failed in this request (no quota reason at all), the error is a
``ChainFailedError`` (HTTP 503) naming each failure, not a quota refusal. Past the call's time budget
(``timeouts.total_s``) no attempt starts: ``BudgetExceededError``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.router import CustomRoutingStrategyBase

from .. import routing
from .._plans import PlanBook
from ..config import Settings
from ..events import Events
from ..limits import SCHEMA_FIELDS, DeploymentPlan, estimate_prompt_tokens, requested_max_tokens
from ..redact import remember, scrub
from ..priority import extra_to_state
from ..request_shape import problem as shape_problem
from ..routing import RETRY_AFTER_BOUND_S, UNSENT_KEY, Skip  # noqa: F401  (re-exported: the walk's names)
from ..routing import short as _short
from ..store import Ask, Blocked, QuotaStore, Reservation, SyncQuotaStore
from ..store.queue import DEFAULT_MAX_WAITERS, LineFull, Turn, WaitQueue, priority_of
from .timeouts import (EXCLUDE_KEY, FAILED_KEY, BudgetExceededError, deadline_of, remaining_s,
                       pause_attempt_clock, restart_attempt_clock, transport_timeout)

log = logging.getLogger("router_plugin")

METADATA_KEY = "router_plugin"
EARLY_KEY = "_router_plugin_early_pick"  # request metadata: the proxy pre-call hook's pick (proxy.py)


class QuotaExhaustedError(litellm.RateLimitError):
    """No deployment of the chain can take this request now. ``retry_after_s`` says when one can."""

    def __init__(self, model: str, message: str, retry_after_s: float | None):
        headers = {"retry-after": str(max(1, math.ceil(retry_after_s)))} if retry_after_s is not None else None
        super().__init__(
            message=f"router_plugin: {scrub(message)}", llm_provider="router_plugin", model=model, num_retries=0,
            headers=headers, category=litellm.exceptions.RateLimitErrorCategory.LITELLM_RATE_LIMIT,
        )
        self.retry_after_s = retry_after_s


class ChainFailedError(litellm.ServiceUnavailableError):
    """Every deployment of the chain failed for this request (none is merely out of quota)."""

    def __init__(self, model: str, message: str, retry_after_s: float | None = None):
        super().__init__(message=f"router_plugin: {scrub(message)}", llm_provider="router_plugin", model=model,
                         num_retries=0)
        self.retry_after_s = retry_after_s
        if retry_after_s is not None:  # the proxy sends exc.headers: when the first cooldown ends
            self.headers = {"retry-after": str(max(1, math.ceil(retry_after_s)))}


class RequestRejectedError(litellm.BadRequestError):
    """The request itself is wrong (malformed, or larger than anything in the chain could ever take): HTTP 400.

    Raised before anything is reserved or sent, so it costs nothing; retrying it unchanged cannot help.
    """

    def __init__(self, model: str, message: str):
        super().__init__(message=f"router_plugin: {scrub(message)}", model=model, llm_provider="router_plugin")


#: LiteLLM's exception types for an error raised inside LiteLLM before the HTTP call, about the request itself
#: (a Python error while building the request is mapped to APIConnectionError).
_CALLER_ERROR_TYPES = frozenset({"APIConnectionError", "BadRequestError", "UnsupportedParamsError",
                                 "UnprocessableEntityError", "JSONSchemaValidationError"})


class SentSignal(CustomLogger):
    """Marks the running attempt as handed to the provider (LiteLLM's pre-call log, just before the HTTP call).

    An attempt that fails without this mark never left the process: the callbacks refund it in full and set
    nothing aside, and the strategy treats it as the request's fault (see ``_Request.of``).
    """

    def log_pre_api_call(self, model, messages, kwargs):
        try:
            params = kwargs.get("litellm_params") or {}
            metadata = params.get("metadata") or kwargs.get("metadata") or {}
            state = metadata.get(METADATA_KEY) if isinstance(metadata, Mapping) else None
            if isinstance(state, dict) and "sent" in state:
                state["sent"] = True
        except Exception:  # never disturb LiteLLM's logging
            pass


SENT_SIGNAL = SentSignal()


def _register_sent_signal() -> None:
    # LiteLLM calls log_pre_api_call for the objects in litellm.input_callback.
    if not any(cb is SENT_SIGNAL for cb in litellm.input_callback):
        litellm.input_callback.append(SENT_SIGNAL)


def _failed_attempts(metadata: Mapping) -> list[dict]:
    return routing.failed_attempts(metadata, FAILED_KEY)


class QuotaRouting(CustomRoutingStrategyBase):
    ready = None  # async () -> None awaited before admitting (calibration.py: once per process, then instant)
    is_ready = None  # () -> bool: ``ready`` would return at once (a prefetch may start)

    def __init__(self, router: Any, settings: Settings, store: QuotaStore, plans: PlanBook, owner: str,
                 sync_store: SyncQuotaStore | None = None, events: Events | None = None):
        self.router = router
        self.events = events if events is not None else Events()
        self.settings = settings
        self.store = store
        self.sync_store = sync_store
        self.plans = plans
        self.owner = owner  # marks this router's reservations so other routers' callbacks leave them alone
        _register_sent_signal()
        try:  # the configured keys are scrubbed from every text the plugin writes (redact.py)
            from .._plans import effective_api_key
            remember(effective_api_key(d.get("litellm_params") or {}) for d in (router.model_list or ()))
        except Exception:  # pragma: no cover - a model list LiteLLM itself would refuse
            pass

    # ---- LiteLLM entry points -------------------------------------------------------------------------------
    #
    # One walk = ONE store call (``reserve_first``): every candidate's Ask in chain order, then the deployments that
    # answered 429 in this request as report-only candidates; the store reserves the first that fits (all its
    # counters or none) or answers every reason with its reset. Metered or not: an unmetered candidate has no
    # counters, only its cooldown / quarantine is checked.

    async def async_get_available_deployment(
        self, model: str, messages: list[dict[str, str]] | None = None, input: str | list | None = None,
        specific_deployment: bool | None = False, request_kwargs: dict | None = None,
    ):
        if self.ready is not None:
            await self.ready()
        request = self._prefetched_request(model, messages, request_kwargs) \
            or _Request.of(self, model, messages, input, request_kwargs)
        deadline = time.monotonic() + self.settings.max_wait_s
        turn = self.wait_line.turn(model, priority_of(request.metadata), deadline) \
            if self.settings.max_wait_s > 0 else None  # waiting in order across workers (store/queue.py)
        try:
            chosen = await self._walk_async(request, deadline, turn)
            if getattr(request, "waited", False):
                restart_attempt_clock()  # the wait was not the deployment's silence (timeouts.py)
            return chosen
        except LineFull as exc:
            log.info("router_plugin refuse group=%s %s", model, exc)
            self.events.refused(model, [], [], self.settings.max_wait_s)
            raise QuotaExhaustedError(model, str(exc), self.settings.max_wait_s) from None
        finally:
            if turn is not None:
                await turn.leave()

    @property
    def wait_line(self) -> WaitQueue:
        line = getattr(self, "_wait_line", None)
        if line is None:
            line = self._wait_line = WaitQueue(self.store, max_waiters=getattr(self.settings, "max_waiters",
                                                                               DEFAULT_MAX_WAITERS))
        return line

    async def _walk_async(self, request: "_Request", deadline: float, turn: Turn | None):
        request.turn = turn  # the wait hook (self.wait) sleeps in it
        while True:
            request.check_budget()
            if turn is not None and not await turn.may_try():  # not at the head of the line: wait to be woken
                if turn.expired:
                    log.info("router_plugin refuse group=%s %s", request.model, turn.refusal_text())
                    self.events.refused(request.model, [], [], None)
                    raise QuotaExhaustedError(request.model, turn.refusal_text(), None)
                request.waited = True
                pause_attempt_clock()
                await turn.sleep(None)
                continue
            started = time.perf_counter()
            prefetch, request.prefetch = request.prefetch, None
            if prefetch is not None:  # the very request the prefetch built and sent at the call's entry
                prefetch.taken = True
                asks, outcome = prefetch.asks, await prefetch.task
            else:
                asks = request.asks()
                outcome = await self._prefetched(asks)
                if outcome is None:
                    outcome = await self.store.reserve_first(asks) if asks else []
            chosen, wait, blocked = request.answer(outcome, asks, time.perf_counter() - started, deadline)
            if chosen is not None:
                return chosen
            await self.wait(request, wait, blocked)

    # ---- the reservation started at the call's entry (install_prefetch) ------------------------------------
    #
    # Between ``router.acompletion(...)`` and its pick LiteLLM spends ~150 µs of its own work (fallback and retry
    # wrappers, metadata); the walk's one round trip to Redis then sits on the caller's path. The prefetch starts
    # that same walk's reservation when the call enters (same chain, same Asks, same atomic script), so Redis works
    # while LiteLLM does; the pick then takes the answer instead of asking again. It is used only when the pick's
    # Asks are exactly those it sent (first attempt of a fresh call); otherwise, or when the call ends before its
    # pick (LiteLLM rejected it, the caller went away), what it reserved is given back as never sent.

    def prefetch(self, model: Any, messages: Any, kwargs: dict) -> "Prefetch | None":
        """Start the first walk's reservation for ``router.acompletion(model, messages, **kwargs)``, or None
        when the pick must decide alone (waiting allowed, readiness pending, a retry, a bad or unknown request)."""
        if (self.ready is not None and not (self.is_ready is not None and self.is_ready())) \
                or self.settings.max_wait_s > 0 or not isinstance(model, str) \
                or not isinstance(messages, list):
            return None
        metadata = _metadata(kwargs)
        if metadata.get(EARLY_KEY) or metadata.get(FAILED_KEY) or metadata.get(METADATA_KEY) \
                or metadata.get(EXCLUDE_KEY):
            return None
        if any(kwargs.get(name) is not None for name in SCHEMA_FIELDS):
            return None  # the pick may see these in another form: let it size the request alone
        deployments = self.router.get_model_list(model_name=model)
        if not deployments or shape_problem(messages, kwargs, chat=True):
            return None
        request = _Request(self, model, deployments, messages, kwargs)
        asks = request.asks()
        if not asks:
            return None
        start = getattr(self.store, "start_reserve_first", None)  # sent now when the store's lane is open
        pending = start(asks) if start is not None else self.store.reserve_first(asks)
        return Prefetch(asks, asyncio.get_running_loop().create_task(pending), self.store, request, messages)

    def _prefetched_request(self, model: str, messages: Any, request_kwargs: dict | None) -> "_Request | None":
        """The prefetch's own ``_Request`` when the pick is for the very call it was built from (same group,
        messages and metadata objects, same size): checked and sized once, not twice."""
        prefetch = self._pending_prefetch()
        if prefetch is None or request_kwargs is None:
            return None
        request = prefetch.request
        if request.model != model or prefetch.messages is not messages \
                or _metadata(request_kwargs) is not request.metadata \
                or requested_max_tokens(request_kwargs, self.settings.default_max_tokens) != request.max_tokens \
                or any(request_kwargs.get(name) is not None for name in SCHEMA_FIELDS):
            return None
        request.kwargs = request_kwargs
        request.prefetch = prefetch  # the walk takes its Asks and answer as they are (a pace ceiling moves with time)
        return request

    async def _prefetched(self, asks: list[Ask]) -> "Reservation | list[Blocked] | None":
        """The prefetch's answer when the pick built its own request and asks the same (else it is given back)."""
        prefetch = self._pending_prefetch()
        if prefetch is None:
            return None
        prefetch.taken = True
        if prefetch.asks != asks:
            prefetch.release()
            return None
        return await prefetch.task

    def _pending_prefetch(self) -> "Prefetch | None":
        """This call's prefetch, when it is this strategy's (its store) and not taken yet."""
        prefetch = _PREFETCH.get()
        return prefetch if prefetch is not None and not prefetch.taken and prefetch.store is self.store else None

    def get_available_deployment(
        self, model: str, messages: list[dict[str, str]] | None = None, input: str | list | None = None,
        specific_deployment: bool | None = False, request_kwargs: dict | None = None,
    ):
        if self.sync_store is None:
            raise RuntimeError("router_plugin: this router was installed without a sync store")
        request = _Request.of(self, model, messages, input, request_kwargs)
        if "timeout" not in request.kwargs:  # sync calls: the transport enforces timeouts.py's limits (no asyncio)
            request.kwargs["timeout"] = transport_timeout(self.settings.timeouts, bool(request.kwargs.get("stream")),
                                                          remaining_s(request.metadata))
        deadline = time.monotonic() + self.settings.max_wait_s
        while True:
            request.check_budget()
            asks = request.asks()
            started = time.perf_counter()
            outcome = self.sync_store.reserve_first(asks) if asks else []
            chosen, wait, blocked = request.answer(outcome, asks, time.perf_counter() - started, deadline)
            if chosen is not None:
                return chosen
            self.wait_sync(request, wait, blocked)

    # ---- where a request waits for a reset (max_wait_s, a 429's short Retry-After) ---------------------------
    # The one place the walk sleeps: replace these to make waiting requests take turns (e.g. in priority order).

    admission: Any = routing.PLAIN_ADMISSION  # .ask(plan, tokens, metadata, now_s) -> Ask; .describe(blocked)

    async def wait(self, request: "_Request", seconds: float, blocked: list[Blocked]) -> None:
        """Wait ``seconds`` before walking the chain again (``blocked``: why nothing fit; ``request.model`` is the
        group, ``request.metadata`` the request's metadata). With max_wait_s > 0 the request waits in its group's
        line (store/queue.py): the head until the reset it was told or until woken."""
        turn = getattr(request, "turn", None)
        request.waited = True
        pause_attempt_clock()
        await (asyncio.sleep(seconds) if turn is None else turn.sleep(seconds))

    def wait_sync(self, request: "_Request", seconds: float, blocked: list[Blocked]) -> None:
        time.sleep(seconds)


class Prefetch:
    """A walk's reservation started at the call's entry (``QuotaRouting.prefetch``)."""

    __slots__ = ("asks", "task", "store", "request", "messages", "taken")

    def __init__(self, asks: list[Ask], task: asyncio.Task, store: Any, request: "_Request", messages: Any):
        self.asks, self.task, self.store, self.taken = asks, task, store, False
        self.request, self.messages = request, messages

    def release(self) -> None:
        """Not taken by the pick: give back what it reserved, as an attempt never sent (off the caller's path)."""
        self.taken = True
        if self.task.done():
            self._give_back(self.task)
        else:
            self.task.add_done_callback(self._give_back)

    def _give_back(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        outcome = task.result()
        if isinstance(outcome, Reservation) and outcome.counters:
            refund = asyncio.get_running_loop().create_task(self.store.refund(outcome, requests=True))
            _RELEASES.add(refund)
            refund.add_done_callback(_RELEASES.discard)


_PREFETCH: "contextvars.ContextVar[Prefetch | None]" = contextvars.ContextVar("router_plugin_prefetch", default=None)
_RELEASES: set = set()  # refunds in flight (a reference until done)
_PREFETCH_MARK = "_router_plugin_prefetch"  # router.__dict__: install_prefetch ran


def install_prefetch(router: Any, strategy_of: Any) -> None:
    """Wrap the public ``router.acompletion`` so the first walk's reservation starts when the call enters (see
    ``QuotaRouting.prefetch``); ``strategy_of()`` is the router's installed strategy. Installed below the stream
    guard: each call (each hop of a stream) starts afresh. A prefetch that fails to start changes nothing."""
    if router.__dict__.get(_PREFETCH_MARK):
        return
    original = router.acompletion

    async def acompletion(model: str, messages: list, **kwargs: Any):
        try:
            prefetch = strategy_of().prefetch(model, messages, kwargs)
        except Exception:  # the pick decides alone, and raises whatever is wrong with the request
            prefetch = None
        if prefetch is None:
            return await original(model=model, messages=messages, **kwargs)
        token = _PREFETCH.set(prefetch)
        try:
            return await original(model=model, messages=messages, **kwargs)
        finally:
            _PREFETCH.reset(token)
            if not prefetch.taken:
                prefetch.release()

    router.acompletion = acompletion
    router.__dict__[_PREFETCH_MARK] = True


class _Request:
    """One routing decision: the chain, the request's size, what was skipped and why."""

    def __init__(self, strategy: QuotaRouting, model: str, deployments: list, messages, request_kwargs: dict):
        self.strategy = strategy
        self.model = model
        self.deployments = deployments
        self.kwargs = request_kwargs
        self.metadata = _metadata(request_kwargs)
        self.state = self.metadata.setdefault(METADATA_KEY, {})
        self.prompt_tokens = estimate_prompt_tokens(messages, request_kwargs)
        self.max_tokens = requested_max_tokens(request_kwargs, strategy.settings.default_max_tokens)
        self.tokens = self.prompt_tokens + self.max_tokens
        plans = strategy.plans
        self.pairs = [(d, plans.plan(d)) for d in deployments]  # each plan looked up once per request
        self.skipped: list[Skip] = []
        self.failures = routing.Failures.of(self.metadata, plans, FAILED_KEY, EXCLUDE_KEY)
        self.retry_rate_limited = False  # set once a 429's short Retry-After has been waited out
        self.waited_for: list[Blocked] = []
        self._deployment_of: dict[str, dict] = {}
        self.prefetch: Prefetch | None = None  # set when this request's first walk was sent at the call's entry

    @classmethod
    def of(cls, strategy: QuotaRouting, model: str, messages, input, request_kwargs) -> "_Request":
        request_kwargs = request_kwargs if request_kwargs is not None else {}
        deployments = strategy.router.get_model_list(model_name=model) or []
        if not deployments:
            known = ", ".join(sorted(strategy.router.get_model_names())) or "(none)"
            raise litellm.BadRequestError(
                message=f"router_plugin: no model group named {model!r}; configured groups: {known}",
                model=model, llm_provider="router_plugin",
            )
        found = shape_problem(messages, request_kwargs, chat=messages is not None)
        if found:  # before anything is reserved: a malformed request costs nothing
            log.info("router_plugin reject group=%s bad request: %s", model, scrub(found))
            raise RequestRejectedError(model, f"bad request: {found}")
        _unsent_attempt(strategy, model, _metadata(request_kwargs))
        if messages is None and isinstance(input, list):
            messages = [{"content": str(x)} for x in input]
        return cls(strategy, model, deployments, messages, request_kwargs)

    def asks(self) -> list[Ask]:
        """This walk's candidates as the store's Asks, in chain order, then the deployments that answered 429 in
        this request as report-only ones (their resets may be waited out). Sets ``skipped``."""
        candidates, self.skipped = routing.select(self.pairs, self.failures, self.tokens, self.retry_rate_limited)
        admission = self.strategy.admission
        now_s = time.time()
        asks = []
        self._deployment_of = {}
        for deployment, plan in candidates:
            asks.append(admission.ask(plan, self.tokens, self.metadata, now_s))
            self._deployment_of[plan.deployment_id] = deployment
        for plan in routing.rate_limited_plans(self.skipped, self.failures, self.retry_rate_limited):
            asks.append(Ask(plan, 0, peek=True))
        return asks

    def chosen_from(self, reservation: Reservation, seconds: float) -> dict:
        plan = reservation.plan
        self.strategy.events.reserve_timed(plan, seconds)
        deployment = self._deployment_of[plan.deployment_id]
        if not reservation.counters:  # unmetered: nothing was reserved, only its cooldown checked
            return self.chosen(deployment, plan, None, reservation.strikes)
        return self.chosen(deployment, plan, reservation)

    def blocked_from(self, outcome: list[Blocked], asks: list[Ask], seconds: float) -> list[Blocked]:
        if asks:
            self.strategy.events.reserve_timed(asks[0].plan, seconds)
        retime = getattr(self.strategy.admission, "retime", None)
        return [retime(b) for b in outcome] if retime is not None else list(outcome)

    def answer(self, outcome: Reservation | list[Blocked], asks: list[Ask], seconds: float,
               deadline: float) -> tuple[dict | None, float, list[Blocked]]:
        """What the store's answer means for this walk, the same for async and sync callers: (the chosen
        deployment, 0, []) or (None, seconds to wait before walking again, why nothing fit); raises the refusal (or
        the 400 of a request nothing could ever take) when the walk must not wait."""
        if isinstance(outcome, Reservation):
            return self.chosen_from(outcome, seconds), 0.0, []
        blocked = self.blocked_from(outcome, asks, seconds)
        self.check_fits(blocked)
        wait = self.wait_before_retry(blocked, deadline)
        if wait is None:
            raise self.refusal(blocked)
        return None, wait, blocked

    def check_budget(self) -> None:
        deadline = deadline_of(self.metadata)
        if deadline is not None and time.time() >= deadline:
            tried = "; ".join(f"{s.plan.model}: {s.why}" for s in self.skipped if s.failed) or "nothing answered"
            raise BudgetExceededError(self.model, f"no complete answer within the call's time budget ({tried})")

    def chosen(self, deployment: dict, plan: DeploymentPlan, reservation: Reservation | None,
               strikes: int = 0) -> dict:
        state = self.state
        attempts = int(state.get("attempts", 0)) + 1
        # Plain values only: LiteLLM and the proxy copy and serialise metadata.
        state.clear()
        state.update(
            owner=self.strategy.owner,
            deployment_id=plan.deployment_id,
            model=plan.model,
            tokens=reservation.tokens if reservation else 0,
            reserved_at_ms=reservation.now_ms if reservation else 0,
            metered=reservation is not None,
            attempts=attempts,
            remaining={s.counter.limit.name: s.remaining for s in reservation.states} if reservation else {},
            strikes=reservation.strikes if reservation else strikes,
            sent=False,  # set by SentSignal when LiteLLM hands the attempt to the provider
            extra=extra_to_state(reservation.extra) if reservation else [],  # e.g. a key's share (priority.py)
        )
        skipped = [(s.plan.model, s.why) for s in self.skipped]
        if log.isEnabledFor(logging.INFO):
            log.info("router_plugin route group=%s chosen=%s attempt=%d tokens~%d skipped=[%s]",
                     self.model, plan.model, attempts, self.tokens, "; ".join(f"{m}: {why}" for m, why in skipped))
        self.strategy.events.routed(self.model, plan, attempts, skipped, reservation)
        return deployment

    def check_fits(self, blocked: list[Blocked]) -> None:
        """Refuse with a 400 when no deployment of the chain could ever take this request (it is larger than every
        context window, or than a whole limit): retrying it unchanged cannot help, so no 429 and no Retry-After."""
        if not self.skipped and not blocked:
            return
        message = routing.never_fits(self.model, {p.deployment_id for _, p in self.pairs}, self.skipped, blocked,
                                     self.failures, self.tokens, self.prompt_tokens, self.max_tokens)
        if message is None:
            return
        log.info("router_plugin reject group=%s never fits: %s", self.model, message)
        self.strategy.events.refused(self.model, blocked, [(s.plan.model, s.why) for s in self.skipped], None)
        raise RequestRejectedError(self.model, message)

    def wait_before_retry(self, blocked: list[Blocked], deadline: float) -> float | None:
        """Seconds to sleep before walking the chain again, or None to refuse now."""
        budget = deadline_of(self.metadata)
        budget_left = None if budget is None else budget - time.time()
        wait = routing.wait_before_retry(self.model, blocked, self.failures, self.retry_rate_limited,
                                         self.strategy.settings.max_wait_s, budget_left, deadline - time.monotonic())
        if wait is None:
            return None
        if wait.rate_limited:
            self.retry_rate_limited = True
            self.waited_for = list(wait.waited_for)
        return wait.seconds

    def refusal(self, blocked: list[Blocked]) -> QuotaExhaustedError | ChainFailedError:
        admission = self.strategy.admission
        describe = None if hasattr(admission, "retime") else getattr(admission, "describe", None)
        refused = routing.refusal(self.model, blocked, self.skipped, describe)
        self.strategy.events.refused(self.model, blocked, [(s.plan.model, s.why) for s in self.skipped],
                                     refused.retry_after_s)
        if refused.kind == routing.QUOTA:
            return QuotaExhaustedError(self.model, refused.message, refused.retry_after_s)
        return ChainFailedError(self.model, refused.message, refused.retry_after_s)


def _metadata(request_kwargs: dict) -> dict:
    for name in ("metadata", "litellm_metadata"):
        value = request_kwargs.get(name)
        if isinstance(value, dict):
            return value
    request_kwargs["metadata"] = {}
    return request_kwargs["metadata"]


def _unsent_attempt(strategy: QuotaRouting, model: str, metadata: dict) -> None:
    """The previous attempt of this request failed before LiteLLM sent it (no pre-call mark): note it
    (``UNSENT_KEY``: it is not tried again, and nothing was spent); when LiteLLM rejected the request itself
    (a Python error while building it, an unsupported parameter) raise a 400 now instead of trying the next
    deployment, which would reject it the same way."""
    state = metadata.get(METADATA_KEY)
    if not isinstance(state, dict) or state.get("owner") != strategy.owner or state.get("sent") is not False:
        return
    deployment_id = str(state.get("deployment_id"))
    failures = [e for e in _failed_attempts(metadata) if e["deployment_id"] == deployment_id]
    if not failures:
        return  # no failure of that attempt on record (e.g. the same metadata reused for a new call)
    last = failures[-1]
    text = _short(last["text"] or last["type"])
    entries = [e for e in metadata.get(UNSENT_KEY) or () if isinstance(e, Mapping)]
    if not any(e.get("deployment_id") == deployment_id and e.get("attempt") == state.get("attempts")
               for e in entries):
        metadata[UNSENT_KEY] = [*entries, {"deployment_id": deployment_id, "model": str(state.get("model")),
                                           "attempt": state.get("attempts"), "type": last["type"], "text": text}]
    if last["type"] in _CALLER_ERROR_TYPES:
        log.info("router_plugin reject group=%s %s rejected the request before sending it: %s", model,
                 state.get("model"), text)
        raise RequestRejectedError(model, f"bad request: rejected before it was sent ({text})")
