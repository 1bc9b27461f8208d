"""What one finished attempt does to the shared counters: settle, refund, set the deployment aside (pure: no
LiteLLM, no Redis — adapter/callbacks.py reads LiteLLM's events into these plain values and carries the answers out
through the store).

    served            -> settle the reservation to the real usage (the estimate when the reply named none)
    failed, unsent    -> refund tokens *and* the request (it never left), set nothing aside
    failed, sent      -> refund tokens (the request stays counted: providers count failed attempts), and set the
                         deployment aside for every worker as the fault says (:func:`set_aside`) — except a first
                         HTTP 500 of a deployment in a request, which the strategy retries once
    failed in stream  -> a bare 429 inside a started stream means that model is busy, not that the pool is spent
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import Cooldowns
from .limits import Counter, DeploymentPlan
from .priority import extra_from_state
from .providers.facts import CreditsExhausted, Exhausted, Fact, ModelBusy, ModelGone, Rejected, ServerError, Unknown
from .store import Reservation

# ---- which attempt, which reservation ---------------------------------------------------------------------------


def unsent(state: Mapping[str, Any], handed_off: bool) -> bool:
    """The attempt failed before LiteLLM handed it to the provider: the strategy marked it ``sent=False`` when it
    chose it and LiteLLM's pre-call log (``strategy.SentSignal``) never marked it sent; LiteLLM's own record of
    the hand-off (``handed_off``: its ``api_call_start_time``) agrees."""
    return "sent" in state and state.get("sent") is not True and not handed_off


def reservation(plan: DeploymentPlan, state: Mapping[str, Any]) -> Reservation | None:
    """The reservation the strategy made for this attempt (None when it metered nothing)."""
    if not state.get("metered"):
        return None
    return Reservation(plan, int(state.get("tokens", 0)), int(state.get("reserved_at_ms", 0)),
                       extra=extra_from_state(state.get("extra")))  # e.g. a key's share (priority.py)


def tokens_to_settle(reported: Any, held: Reservation | None) -> int:
    """Real usage; a missing or zero usage keeps the estimate (LiteLLM drops Groq's ``x_groq.usage`` on
    streams without ``stream_options.include_usage``: settling to 0 would under-count)."""
    if isinstance(reported, int) and reported > 0:
        return reported
    return held.tokens if held is not None else 0


# ---- a failed attempt -------------------------------------------------------------------------------------------


def first_500(fact: Fact, deployment_id: str, failures: Any, previous: Iterable[Any], attempt: int) -> bool:
    """An HTTP 500 with no earlier failure of this deployment in this request: the strategy retries it once.
    ``failures``: the plugin's record of the request's failed attempts (``FAILED_KEY``, async path, numbered by
    attempt); ``previous``: the deployment ids LiteLLM's breadcrumbs name (sync path, used when there is no record)."""
    if not (isinstance(fact, ServerError) and fact.status == 500):
        return False
    if isinstance(failures, (list, tuple)):
        return not any(isinstance(e, Mapping) and str(e.get("deployment_id")) == deployment_id
                       and int(e.get("attempt") or 0) < attempt for e in failures)
    return not any(str(d) == deployment_id for d in previous)


def in_stream(fact: Fact) -> Fact:
    """A 429 inside a started stream names no pool unless it says so (providers.md §1.3 mid-stream example):
    the model is busy, as ``providers.classify_stream_chunk`` has it — the account's minute is not spent."""
    if isinstance(fact, Exhausted) and not fact.model_only and "free-models-per" not in fact.detail:
        return ModelBusy(fact.detail)
    return fact


@dataclass(frozen=True)
class Failure:
    """How to book one failed attempt."""

    fact: Fact  # what happened (events.failed)
    label: str  # the attempt record's ``last_failure``
    set_aside: bool  # record the fact for every worker (:func:`set_aside`)
    refund_requests: bool = False  # the attempt never left: its request is refunded with its tokens
    note: str = ""  # an info line for the log


def failure(plan: DeploymentPlan, state: Mapping[str, Any], *, handed_off: bool, detail: str,
            classify: Callable[[], Fact], stream_started: bool, failures: Any, previous: Iterable[Any]) -> Failure:
    """Book a failure LiteLLM reported. ``detail``: its message (scrubbed); ``classify``: the provider's reading of
    it (asked only when the attempt was sent); ``stream_started``: a stream had delivered its first chunk;
    ``failures`` / ``previous``: as for :func:`first_500`."""
    if unsent(state, handed_off):
        return Failure(Rejected(None, f"not sent: {detail}"), "Unsent", set_aside=False, refund_requests=True,
                       note=f"{plan.model} failed before the request was sent ({detail}); refunded, nothing set aside")
    fact = classify()
    if stream_started:
        fact = in_stream(fact)  # the stream had started: an in-band error chunk, not an HTTP status
    if first_500(fact, plan.deployment_id, failures, previous, int(state.get("attempts") or 0)):
        return Failure(fact, type(fact).__name__, set_aside=False,
                       note=f"{plan.model} answered 500; one retry on it before it is set aside")
    return Failure(fact, type(fact).__name__, set_aside=True)


# ---- setting a deployment aside -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cool:
    """Set the model aside: ``store.cool(plan, reason, base_s, max_s, escalate=..., until_ms=...)``."""

    reason: str
    base_s: float
    max_s: float
    escalate: bool = True
    until_ms: int = 0
    error_if_first: str = ""  # logged as an error when this cooldown is the model's first strike (once per episode)


@dataclass(frozen=True)
class Block:
    """Block one of the deployment's counters: ``store.block(plan, counter, until_ms, reason, for_ms=...)``."""

    counter: Counter
    until_ms: int
    reason: str
    for_ms: int = 0


@dataclass(frozen=True)
class SetAside:
    """What a fault does to the deployment for every worker, and what is said about it."""

    actions: list = field(default_factory=list)  # Cool / Block, in order
    warning: str = ""
    error: str = ""
    clamped: str = ""  # a provider value bounded in providers/bounds.py: said and counted


def stated_wait(fact: Fact) -> float | None:
    """The wait a provider stated for a busy / failing model (Retry-After), in seconds; None when it named none."""
    wait = getattr(fact, "retry_after", None)
    return float(wait) if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0 else None


def set_aside(plan: DeploymentPlan, fact: Fact, cd: Cooldowns, classified_at: float | None = None) -> SetAside:
    """The cooldowns and blocks a fault calls for (``classified_at``: when it was read, for a stated wait)."""
    clamped = getattr(fact, "clamped", "") or ""
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
            action: Cool | Block = Cool(f"{fact.limit} limit: {fact.detail}", for_ms / 1000, for_ms / 1000,
                                        escalate=False, until_ms=0 if for_ms else until_ms)
        else:
            action = Block(counter, until_ms, "exhausted (provider 429)", for_ms=for_ms)
        return SetAside([action], clamped=clamped,
                        warning=f"{plan.model} exhausted {fact.limit} until "
                                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(fact.until))}: {fact.detail}")
    if isinstance(fact, (ModelBusy, ServerError)) and stated_wait(fact) is not None:
        # The provider named the wait (Retry-After): set the model aside for exactly that long (no doubling),
        # bounded by that kind's longest cooldown.
        bound = cd.busy_max_s if isinstance(fact, ModelBusy) else cd.server_error_max_s
        wait = min(stated_wait(fact), bound)
        return SetAside([Cool(f"{'busy upstream' if isinstance(fact, ModelBusy) else 'failing'}: {fact.detail} "
                              f"(retry after {wait:g} s)", wait, wait, escalate=False)], clamped=clamped)
    if isinstance(fact, ModelBusy):
        return SetAside([Cool(f"busy upstream: {fact.detail}", cd.busy_s, cd.busy_max_s)], clamped=clamped)
    if isinstance(fact, ModelGone):
        return SetAside([Cool(f"quarantined: {fact.detail}", cd.gone_s, cd.gone_s, escalate=False,
                              error_if_first=f"{plan.model} is gone ({fact.detail}); quarantined for "
                                             f"{cd.gone_s / 3600:.0f} h for every worker — remove it from the config")],
                        clamped=clamped)
    if isinstance(fact, CreditsExhausted):
        return SetAside([Block(c, 0, "account balance negative (402)", for_ms=int(cd.credits_s * 1000))
                         for c in plan.counters], clamped=clamped,
                        error=f"OpenRouter account balance is negative (402: {fact.detail}); every :free model of "
                              f"this key refuses until credits are added — pool blocked for {cd.credits_s:.0f} s")
    if isinstance(fact, (ServerError, Unknown)):
        return SetAside([Cool(f"failing: {fact.detail}", cd.server_error_s, cd.server_error_max_s)], clamped=clamped)
    # ContextTooLong, RequestTooLarge, Rejected: this request's own problem, nothing to share.
    return SetAside(clamped=clamped)


__all__ = ["Block", "Cool", "Failure", "SetAside", "failure", "first_500", "in_stream",
           "reservation", "set_aside", "stated_wait", "tokens_to_settle", "unsent"]
