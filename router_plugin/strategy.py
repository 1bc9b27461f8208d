"""The routing strategy: walk the model group's chain in config order, reserve atomically, take the first that fits.

A deployment is skipped when it failed earlier in this request, cannot hold the prompt (context window), or its
reservation is refused (a counter is full, the pool is blocked until the provider's reset, the model is cooling
down or quarantined). When nothing fits: wait for the earliest reset if ``max_wait_s`` allows, else refuse at once
with a ``QuotaExhaustedError`` (a ``litellm.RateLimitError``, HTTP 429 through the proxy) that names every
exhausted pool and when it comes back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import litellm
from litellm.router import CustomRoutingStrategyBase

from ._plans import PlanBook
from .config import Settings
from .events import Events
from .limits import DeploymentPlan, estimate_prompt_tokens, requested_max_tokens
from .store import Blocked, QuotaStore, Reservation, SyncQuotaStore

log = logging.getLogger("router_plugin")

METADATA_KEY = "router_plugin"


class QuotaExhaustedError(litellm.RateLimitError):
    """No deployment of the chain can take this request now. ``retry_after_s`` says when one can."""

    def __init__(self, model: str, message: str, retry_after_s: float | None):
        headers = {"retry-after": str(max(1, math.ceil(retry_after_s)))} if retry_after_s is not None else None
        super().__init__(
            message=f"router_plugin: {message}", llm_provider="router_plugin", model=model, num_retries=0,
            headers=headers, category=litellm.exceptions.RateLimitErrorCategory.LITELLM_RATE_LIMIT,
        )
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Skip:
    plan: DeploymentPlan
    why: str


class QuotaRouting(CustomRoutingStrategyBase):
    def __init__(self, router: Any, settings: Settings, store: QuotaStore, plans: PlanBook, owner: str,
                 sync_store: SyncQuotaStore | None = None, events: Events | None = None):
        self.router = router
        self.events = events if events is not None else Events()
        self.settings = settings
        self.store = store
        self.sync_store = sync_store
        self.plans = plans
        self.owner = owner  # marks this router's reservations so other routers' callbacks leave them alone

    # ---- LiteLLM entry points -------------------------------------------------------------------------------

    async def async_get_available_deployment(
        self, model: str, messages: list[dict[str, str]] | None = None, input: str | list | None = None,
        specific_deployment: bool | None = False, request_kwargs: dict | None = None,
    ):
        request = _Request.of(self, model, messages, input, request_kwargs)
        deadline = time.monotonic() + self.settings.max_wait_s
        while True:
            blocked: list[Blocked] = []
            for deployment, plan in request.candidates():
                if not plan.metered:
                    return request.chosen(deployment, plan, None)
                started = time.perf_counter()
                outcome = await self.store.reserve(plan, request.tokens)
                self.events.reserve_timed(plan, time.perf_counter() - started)
                if isinstance(outcome, Reservation):
                    return request.chosen(deployment, plan, outcome)
                blocked.append(outcome)
            wait = request.wait_before_retry(blocked, deadline)
            if wait is None:
                raise request.refusal(blocked)
            await asyncio.sleep(wait)

    def get_available_deployment(
        self, model: str, messages: list[dict[str, str]] | None = None, input: str | list | None = None,
        specific_deployment: bool | None = False, request_kwargs: dict | None = None,
    ):
        if self.sync_store is None:
            raise RuntimeError("router_plugin: this router was installed without a sync store")
        request = _Request.of(self, model, messages, input, request_kwargs)
        deadline = time.monotonic() + self.settings.max_wait_s
        while True:
            blocked: list[Blocked] = []
            for deployment, plan in request.candidates():
                if not plan.metered:
                    return request.chosen(deployment, plan, None)
                started = time.perf_counter()
                outcome = self.sync_store.reserve(plan, request.tokens)
                self.events.reserve_timed(plan, time.perf_counter() - started)
                if isinstance(outcome, Reservation):
                    return request.chosen(deployment, plan, outcome)
                blocked.append(outcome)
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
        self.prompt_tokens = estimate_prompt_tokens(messages)
        self.max_tokens = requested_max_tokens(request_kwargs, strategy.settings.default_max_tokens)
        self.tokens = self.prompt_tokens + self.max_tokens
        self.skipped: list[Skip] = []

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
        if messages is None and isinstance(input, list):
            messages = [{"content": str(x)} for x in input]
        return cls(strategy, model, deployments, messages, request_kwargs)

    def candidates(self) -> Iterator[tuple[dict, DeploymentPlan]]:
        self.skipped = []
        failed = _failed_deployment_ids(self.metadata)
        for deployment in self.deployments:
            plan = self.strategy.plans.plan(deployment)
            if plan.deployment_id in failed:
                self.skipped.append(Skip(plan, "failed earlier in this request"))
            elif plan.context_window and self.tokens > plan.context_window:
                self.skipped.append(
                    Skip(plan, f"request needs ~{self.tokens} tokens, context window is {plan.context_window}")
                )
            else:
                yield deployment, plan

    def chosen(self, deployment: dict, plan: DeploymentPlan, reservation: Reservation | None) -> dict:
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
        )
        skipped = [(s.plan.model, s.why) for s in self.skipped]
        log.info(
            "router_plugin route group=%s chosen=%s attempt=%d tokens~%d skipped=[%s]",
            self.model, plan.model, attempts, self.tokens, "; ".join(f"{m}: {why}" for m, why in skipped),
        )
        self.strategy.events.routed(self.model, plan, attempts, skipped, reservation)
        return deployment

    def wait_before_retry(self, blocked: list[Blocked], deadline: float) -> float | None:
        """Seconds to sleep before walking the chain again, or None to refuse now."""
        if self.strategy.settings.max_wait_s <= 0:
            return None
        waits = [b.wait_s for b in blocked if not b.never]
        if not waits:
            return None
        wait = min(waits) + 0.01
        return wait if time.monotonic() + wait <= deadline else None

    def refusal(self, blocked: list[Blocked]) -> QuotaExhaustedError:
        reasons = _describe_blocked(blocked) + [f"{s.plan.model}: {s.why}" for s in self.skipped]
        waits = [b.wait_s for b in blocked if not b.never]
        retry_after = min(waits) if waits else None
        message = f"no deployment of '{self.model}' can take this request now: " + "; ".join(reasons or ["no candidates"])
        log.info("router_plugin refuse group=%s reasons=[%s]", self.model, "; ".join(reasons))
        self.strategy.events.refused(self.model, blocked, [(s.plan.model, s.why) for s in self.skipped], retry_after)
        return QuotaExhaustedError(self.model, message, retry_after)


def _metadata(request_kwargs: dict) -> dict:
    for name in ("metadata", "litellm_metadata"):
        value = request_kwargs.get(name)
        if isinstance(value, dict):
            return value
    request_kwargs["metadata"] = {}
    return request_kwargs["metadata"]


def _failed_deployment_ids(metadata: Mapping) -> set[str]:
    previous = metadata.get("previous_models") or ()
    ids = set()
    for entry in previous:
        if isinstance(entry, Mapping) and entry.get("deployment_id"):
            ids.add(str(entry["deployment_id"]))
    return ids


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


def human_duration(seconds: float) -> str:
    seconds = max(0, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"
