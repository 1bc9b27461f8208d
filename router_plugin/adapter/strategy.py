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
import logging
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm.router import CustomRoutingStrategyBase

from .._format import human_duration
from .._plans import PlanBook
from ..config import Settings
from ..events import Events
from ..limits import DeploymentPlan, estimate_prompt_tokens, requested_max_tokens
from ..redact import remember, scrub
from ..request_shape import problem as shape_problem
from ..store import Blocked, QuotaStore, Reservation, SyncQuotaStore
from ..store.queue import DEFAULT_MAX_WAITERS, LineFull, Turn, WaitQueue, priority_of
from .timeouts import EXCLUDE_KEY, FAILED_KEY, BudgetExceededError, deadline_of, remaining_s, transport_timeout

log = logging.getLogger("router_plugin")

METADATA_KEY = "router_plugin"
#: A 429 whose recorded reset is at most this far away may be waited out and retried when nothing else can serve.
RETRY_AFTER_BOUND_S = 3.0


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


#: Request metadata key: deployments whose attempt in this request failed before it was sent (LiteLLM rejected
#: the request locally), [{deployment_id, model, type, text}]. Written by the strategy from the attempt's state.
UNSENT_KEY = "router_plugin_unsent"
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


@dataclass(frozen=True)
class Skip:
    plan: DeploymentPlan
    why: str
    failed: bool = False  # set aside because it failed in this request (not for quota or size)
    never: bool = False  # the request can never fit this deployment (context window)


@dataclass
class _Failures:
    """What this request's earlier attempts say about each deployment.

    Source: the plugin's own record of failed attempts (``FAILED_KEY``, written by timeouts.py as each attempt
    fails, with the HTTP status), else LiteLLM's retry breadcrumbs (``previous_models``, the sync path), plus the
    deployments streams.py took out after a stream broke off (``EXCLUDE_KEY``).
    """

    out: dict[str, str]  # deployment id -> why it is not tried again
    rate_limited: dict[str, str]  # deployment id -> its 429, may be waited out
    context_floor: int = 0  # a deployment needs a larger context window than this
    too_long: frozenset = frozenset()  # deployments that answered "context length exceeded" in this request

    @classmethod
    def of(cls, metadata: Mapping, plans: PlanBook) -> "_Failures":
        per_id: dict[str, list[dict]] = {}
        for entry in _failed_attempts(metadata):
            per_id.setdefault(entry["deployment_id"], []).append(entry)
        out: dict[str, str] = {}
        rate_limited: dict[str, str] = {}
        floor = 0
        too_long = set()
        for deployment_id, entries in per_id.items():
            last = entries[-1]
            text = _short(last["text"] or last["type"])
            if len(entries) == 1 and last["status"] == 500:
                continue  # HTTP 500 once: one more attempt on the same deployment
            if all(e["status"] == 429 for e in entries):
                rate_limited[deployment_id] = text
                continue
            if _is_context(last["type"], last["text"]):
                plan = plans.by_id(deployment_id)
                said = _CONTEXT_NUMBER.search(last["text"])
                window = int(said.group(1)) if said else (plan.context_window if plan else 0) or 0
                floor = max(floor, window)
                too_long.add(deployment_id)
            out[deployment_id] = f"failed earlier in this request ({text})"
        for entry in metadata.get(EXCLUDE_KEY) or ():
            if isinstance(entry, Mapping) and entry.get("deployment_id"):
                out[str(entry["deployment_id"])] = \
                    f"failed earlier in this request ({_short(str(entry.get('why', 'stream')))})"
        for entry in metadata.get(UNSENT_KEY) or ():
            if isinstance(entry, Mapping) and entry.get("deployment_id"):
                rate_limited.pop(str(entry["deployment_id"]), None)
                out[str(entry["deployment_id"])] = f"rejected before it was sent ({_short(str(entry.get('text')))})"
        return cls(out, rate_limited, floor, frozenset(too_long))


def _failed_attempts(metadata: Mapping) -> list[dict]:
    own = metadata.get(FAILED_KEY)
    if isinstance(own, (list, tuple)):  # the plugin's own record (every async call starts one)
        return [{"deployment_id": str(e.get("deployment_id")), "status": e.get("status"),
                 "type": str(e.get("type") or ""), "text": str(e.get("text") or "")}
                for e in own if isinstance(e, Mapping) and e.get("deployment_id")]
    entries = []
    for e in metadata.get("previous_models") or ():
        if isinstance(e, Mapping) and e.get("deployment_id"):
            kind, text = str(e.get("exception_type") or ""), str(e.get("exception_string") or "")
            code = _STATUS_IN_TEXT.search(text)
            status = {"InternalServerError": 500, "RateLimitError": 429}.get(kind) or \
                (int(code.group(1)) if code else None)
            entries.append({"deployment_id": str(e["deployment_id"]), "status": status, "type": kind, "text": text})
    return entries


class QuotaRouting(CustomRoutingStrategyBase):
    ready = None  # async () -> None awaited before admitting (calibration.py: once per process, then instant)

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

    async def async_get_available_deployment(
        self, model: str, messages: list[dict[str, str]] | None = None, input: str | list | None = None,
        specific_deployment: bool | None = False, request_kwargs: dict | None = None,
    ):
        if self.ready is not None:
            await self.ready()
        request = _Request.of(self, model, messages, input, request_kwargs)
        deadline = time.monotonic() + self.settings.max_wait_s
        turn = self.wait_line.turn(model, priority_of(request.metadata), deadline) \
            if self.settings.max_wait_s > 0 else None  # waiting in order across workers (store/queue.py)
        try:
            return await self._walk_async(request, deadline, turn)
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
        while True:
            request.check_budget()
            blocked: list[Blocked] = []
            if turn is not None and not await turn.may_try():  # not at the head of the line: wait to be woken
                if turn.expired:
                    log.info("router_plugin refuse group=%s %s", request.model, turn.refusal_text())
                    self.events.refused(request.model, [], [], None)
                    raise QuotaExhaustedError(request.model, turn.refusal_text(), None)
                await turn.sleep(None)
                continue
            for deployment, plan in request.candidates():
                if not plan.metered:  # no counters, but its cooldown / quarantine counts (one dry round trip)
                    outcome = await self.store.peek(plan)
                    if isinstance(outcome, Blocked):
                        blocked.append(outcome)
                        continue
                    return request.chosen(deployment, plan, None, outcome.strikes)
                started = time.perf_counter()
                outcome = await self.store.reserve(plan, request.tokens)
                self.events.reserve_timed(plan, time.perf_counter() - started)
                if isinstance(outcome, Reservation):
                    return request.chosen(deployment, plan, outcome)
                blocked.append(outcome)
            for plan in request.rate_limited_plans():
                outcome = await self.store.peek(plan)
                if isinstance(outcome, Blocked):
                    blocked.append(outcome)
            request.check_fits(blocked)
            wait = request.wait_before_retry(blocked, deadline)
            if wait is None:
                raise request.refusal(blocked)
            await (asyncio.sleep(wait) if turn is None else turn.sleep(wait))

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
            blocked: list[Blocked] = []
            for deployment, plan in request.candidates():
                if not plan.metered:  # no counters, but its cooldown / quarantine counts (one dry round trip)
                    outcome = self.sync_store.peek(plan)
                    if isinstance(outcome, Blocked):
                        blocked.append(outcome)
                        continue
                    return request.chosen(deployment, plan, None, outcome.strikes)
                started = time.perf_counter()
                outcome = self.sync_store.reserve(plan, request.tokens)
                self.events.reserve_timed(plan, time.perf_counter() - started)
                if isinstance(outcome, Reservation):
                    return request.chosen(deployment, plan, outcome)
                blocked.append(outcome)
            for plan in request.rate_limited_plans():
                outcome = self.sync_store.peek(plan)
                if isinstance(outcome, Blocked):
                    blocked.append(outcome)
            request.check_fits(blocked)
            wait = request.wait_before_retry(blocked, deadline)
            if wait is None:
                raise request.refusal(blocked)
            time.sleep(wait)


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
        self.skipped: list[Skip] = []
        self.failures = _Failures.of(self.metadata, strategy.plans)
        self.retry_rate_limited = False  # set once a 429's short Retry-After has been waited out
        self.waited_for: list[Blocked] = []

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

    def candidates(self) -> Iterator[tuple[dict, DeploymentPlan]]:
        self.skipped = []
        failures = self.failures
        floor = failures.context_floor
        for deployment in self.deployments:
            plan = self.strategy.plans.plan(deployment)
            if plan.deployment_id in failures.out:
                self.skipped.append(Skip(plan, failures.out[plan.deployment_id], failed=True))
            elif plan.deployment_id in failures.rate_limited and not self.retry_rate_limited:
                self.skipped.append(Skip(plan, f"answered 429 earlier in this request "
                                               f"({failures.rate_limited[plan.deployment_id]})", failed=True))
            elif plan.context_window and self.tokens > plan.context_window:
                self.skipped.append(
                    Skip(plan, f"request needs ~{self.tokens} tokens, context window is {plan.context_window}",
                         never=True)
                )
            elif floor and plan.context_window and plan.context_window <= floor:
                self.skipped.append(Skip(plan, f"context window {plan.context_window} is no larger than the "
                                               f"{floor} that already rejected this prompt as too long", never=True))
            else:
                yield deployment, plan

    def rate_limited_plans(self) -> list[DeploymentPlan]:
        """Deployments that answered 429 in this request and were passed over: their resets may be waited out."""
        if self.retry_rate_limited:
            return []
        return [s.plan for s in self.skipped if s.plan.deployment_id in self.failures.rate_limited]

    def check_budget(self) -> None:
        deadline = deadline_of(self.metadata)
        if deadline is not None and time.time() >= deadline:
            tried = "; ".join(f"{s.plan.model}: {s.why}" for s in self.skipped if s.failed) or "nothing answered"
            raise BudgetExceededError(self.model, f"no complete answer within the call's time budget ({tried})")

    def chosen(self, deployment: dict, plan: DeploymentPlan, reservation: Reservation | None,
               strikes: int = 0) -> dict:
        attempts = int(self.state.get("attempts", 0)) + 1
        # Plain values only: LiteLLM and the proxy copy and serialise metadata.
        self.state.clear()
        self.state.update(
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
        )
        skipped = [(s.plan.model, s.why) for s in self.skipped]
        log.info(
            "router_plugin route group=%s chosen=%s attempt=%d tokens~%d skipped=[%s]",
            self.model, plan.model, attempts, self.tokens, "; ".join(f"{m}: {why}" for m, why in skipped),
        )
        self.strategy.events.routed(self.model, plan, attempts, skipped, reservation)
        return deployment

    def check_fits(self, blocked: list[Blocked]) -> None:
        """Refuse with a 400 when no deployment of the chain could ever take this request (it is larger than every
        context window, or than a whole limit): retrying it unchanged cannot help, so no 429 and no Retry-After."""
        if not self.skipped and not blocked:
            return
        never_ids = {s.plan.deployment_id for s in self.skipped if s.never}
        never_ids |= {b.plan.deployment_id for b in blocked if b.never}
        never_ids |= {s.plan.deployment_id for s in self.skipped if s.plan.deployment_id in self.failures.too_long}
        if len(never_ids) < len({self.strategy.plans.plan(d).deployment_id for d in self.deployments}):
            return
        windows = [s.plan.context_window for s in self.skipped if s.never and s.plan.context_window]
        need = f"~{self.tokens:,} tokens (prompt ~{self.prompt_tokens:,} + completion {self.max_tokens:,})"
        limits = [f"{b.counter.label} is {b.counter.limit.capacity:,}" for b in blocked if b.never and b.counter]
        parts = []
        if windows:
            parts.append(f"the largest context window in '{self.model}' is {max(windows):,}")
        if limits:
            parts.append("; ".join(dict.fromkeys(limits)))
        rejected = [s.plan.model for s in self.skipped if s.plan.deployment_id in self.failures.too_long]
        if rejected:
            parts.append(f"{', '.join(rejected)} answered that the prompt exceeds its context window")
        message = (f"request needs {need}; " + "; ".join(parts or ["no deployment can take it"])
                   + " (send a shorter prompt or a smaller max_tokens)")
        log.info("router_plugin reject group=%s never fits: %s", self.model, message)
        self.strategy.events.refused(self.model, blocked, [(s.plan.model, s.why) for s in self.skipped], None)
        raise RequestRejectedError(self.model, message)

    def wait_before_retry(self, blocked: list[Blocked], deadline: float) -> float | None:
        """Seconds to sleep before walking the chain again, or None to refuse now."""
        budget = deadline_of(self.metadata)
        budget_left = None if budget is None else budget - time.time()
        short = [b for b in blocked if not b.never and b.plan.deployment_id in self.failures.rate_limited]
        if short and not self.retry_rate_limited:
            # A provider 429 in this request with a short Retry-After, and nothing else can serve: wait it out.
            wait = min(b.wait_s for b in short) + 0.01
            bound = max(RETRY_AFTER_BOUND_S, self.strategy.settings.max_wait_s)
            if wait <= bound and (budget_left is None or wait < budget_left):
                self.retry_rate_limited = True
                self.waited_for = short
                log.info("router_plugin wait group=%s %.2fs for the reset of %s (429 in this request)",
                         self.model, wait, ", ".join(sorted({b.plan.model for b in short})))
                return wait
        if self.strategy.settings.max_wait_s <= 0:
            return None
        waits = [b.wait_s for b in blocked if not b.never]
        if not waits:
            return None
        wait = min(waits) + 0.01
        if budget_left is not None and wait >= budget_left:
            return None
        return wait if time.monotonic() + wait <= deadline else None

    def refusal(self, blocked: list[Blocked]) -> QuotaExhaustedError | ChainFailedError:
        if not blocked and any(s.failed for s in self.skipped):  # nothing is out of quota: providers failed
            said = scrub("; ".join(f"{s.plan.model}: {s.why}" for s in self.skipped))
            log.info("router_plugin chain failed group=%s reasons=[%s]", self.model, said)
            self.strategy.events.refused(self.model, blocked, [(s.plan.model, s.why) for s in self.skipped], None)
            return ChainFailedError(self.model, f"every deployment of '{self.model}' failed for this request: {said}")
        reasons = _describe_blocked(blocked) + [f"{s.plan.model}: {s.why}" for s in self.skipped]
        said = scrub("; ".join(reasons))  # one scrubbed text for the log line and the error
        waits = [b.wait_s for b in blocked if not b.never]
        retry_after = min(waits) if waits else None
        if blocked and all(b.counter is None and not b.never for b in blocked):
            # No quota reason at all: every deployment is set aside after failures (its own or other workers'):
            # an outage (503), not a quota refusal; come back when the first cooldown ends.
            log.info("router_plugin chain cooling down group=%s reasons=[%s]", self.model, said)
            self.strategy.events.refused(self.model, blocked, [(s.plan.model, s.why) for s in self.skipped],
                                         retry_after)
            return ChainFailedError(self.model, f"every deployment of '{self.model}' is cooling down after "
                                                f"failures: {said}", retry_after)
        message = f"no deployment of '{self.model}' can take this request now: " + (said or "no candidates")
        log.info("router_plugin refuse group=%s reasons=[%s]", self.model, said)
        self.strategy.events.refused(self.model, blocked, [(s.plan.model, s.why) for s in self.skipped], retry_after)
        return QuotaExhaustedError(self.model, message, retry_after)


def _metadata(request_kwargs: dict) -> dict:
    for name in ("metadata", "litellm_metadata"):
        value = request_kwargs.get(name)
        if isinstance(value, dict):
            return value
    request_kwargs["metadata"] = {}
    return request_kwargs["metadata"]


_CONTEXT_NUMBER = re.compile(r"maximum context length is (\d+)", re.IGNORECASE)
_STATUS_IN_TEXT = re.compile(r'"code"\s*:\s*"?(\d{3})\b')
_CONTEXT_WORDS = ("context length", "context_length", "context window", "reduce the length of the messages")


def _is_context(kind: str, text: str) -> bool:
    low = text.lower()
    return kind == "ContextWindowExceededError" or any(w in low for w in _CONTEXT_WORDS)


_EXC_PREFIX = re.compile(r"^(?:litellm\.\w+: )?(?:\w+Error: |Timeout: )?")


def _short(text: str, n: int = 200) -> str:
    """One line of an exception string, without LiteLLM's repeated class-name prefixes and group suffix, and
    without any key an upstream echoed (redact.py)."""
    text = _EXC_PREFIX.sub("", scrub(text).split("\nLiteLLM: model group", 1)[0].strip())
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _describe_blocked(blocked: list[Blocked]) -> list[str]:
    """One phrase per exhausted pool (two :free models on one account are one pool: named once)."""
    seen: dict[tuple[str, str], str] = {}
    for b in blocked:
        if b.counter is None:
            key, text = (b.plan.slot, b.plan.model), f"{b.plan.model} set aside ({b.why}) until {_when(b)}"
        elif b.never:
            key, text = (b.plan.slot, b.counter.key), f"{b.counter.label}: request larger than the whole limit"
        else:
            label = b.counter.label
            state = "exhausted" if b.why in ("full", "exhausted") else b.why
            key, text = (b.plan.slot, b.counter.key), f"{label} {state} until {_when(b)}"
        seen.setdefault(key, text)
    return list(seen.values())


def _when(b: Blocked) -> str:
    at = time.strftime("%H:%M:%S UTC", time.gmtime(b.until_ms / 1000))
    return f"{at} (in {human_duration(b.wait_s)})"




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
