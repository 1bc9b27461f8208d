"""The routing walk's decisions, in plain Python (no LiteLLM): which deployments of a chain are candidates, what
this request's earlier attempts rule out, when to wait and when to refuse, and how a refusal reads.

``adapter/strategy.py`` asks the store once per walk (``reserve_first`` over every candidate's ``Ask``) and only
translates between LiteLLM and these functions; the exceptions it raises are built from the plain values here.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._format import human_duration
from .limits import DeploymentPlan
from .redact import scrub
from .store._codec import Ask, Blocked

log = logging.getLogger("router_plugin")

#: A 429 whose recorded reset is at most this far away may be waited out and retried when nothing else can serve.
RETRY_AFTER_BOUND_S = 3.0
#: Request metadata key: deployments whose attempt in this request failed before it was sent (LiteLLM rejected
#: the request locally), [{deployment_id, model, type, text}]. Written by the strategy from the attempt's state.
UNSENT_KEY = "router_plugin_unsent"


class PlainAdmission:
    """The admission policy when none is configured: every candidate asks for its plan's counters as they are.
    (priority.py's ``Admission`` has the same two methods and adds ceilings, extra counters and phrases.)"""

    def ask(self, plan: DeploymentPlan, tokens: int, metadata: Any = None, now_s: float | None = None) -> Ask:
        return Ask(plan, tokens)

    def describe(self, blocked: Blocked) -> str | None:
        return None


PLAIN_ADMISSION = PlainAdmission()


@dataclass(frozen=True)
class Skip:
    plan: DeploymentPlan
    why: str
    failed: bool = False  # set aside because it failed in this request (not for quota or size)
    never: bool = False  # the request can never fit this deployment (context window)


@dataclass
class Failures:
    """What this request's earlier attempts say about each deployment.

    Source: the plugin's own record of failed attempts (``failed_key``, written by timeouts.py as each attempt
    fails, with the HTTP status), else LiteLLM's retry breadcrumbs (``previous_models``, the sync path), plus the
    deployments streams.py took out after a stream broke off (``exclude_key``).
    """

    out: dict[str, str]  # deployment id -> why it is not tried again
    rate_limited: dict[str, str]  # deployment id -> its 429, may be waited out
    context_floor: int = 0  # a deployment needs a larger context window than this
    too_long: frozenset = frozenset()  # deployments that answered "context length exceeded" in this request

    @classmethod
    def of(cls, metadata: Mapping, plans: Any, failed_key: str, exclude_key: str) -> "Failures":
        attempts = failed_attempts(metadata, failed_key)
        excluded = metadata.get(exclude_key)
        unsent = metadata.get(UNSENT_KEY)
        if not attempts and not excluded and not unsent:
            return cls({}, {})  # the common case: a first attempt
        per_id: dict[str, list[dict]] = {}
        for entry in attempts:
            per_id.setdefault(entry["deployment_id"], []).append(entry)
        out: dict[str, str] = {}
        rate_limited: dict[str, str] = {}
        floor = 0
        too_long = set()
        for deployment_id, entries in per_id.items():
            last = entries[-1]
            text = short(last["text"] or last["type"])
            if len(entries) == 1 and last["status"] == 500:
                continue  # HTTP 500 once: one more attempt on the same deployment
            if all(e["status"] == 429 for e in entries):
                rate_limited[deployment_id] = text
                continue
            if is_context(last["type"], last["text"]):
                plan = plans.by_id(deployment_id)
                said = _CONTEXT_NUMBER.search(last["text"])
                window = int(said.group(1)) if said else (plan.context_window if plan else 0) or 0
                floor = max(floor, window)
                too_long.add(deployment_id)
            out[deployment_id] = f"failed earlier in this request ({text})"
        for entry in excluded or ():
            if isinstance(entry, Mapping) and entry.get("deployment_id"):
                out[str(entry["deployment_id"])] = \
                    f"failed earlier in this request ({short(str(entry.get('why', 'stream')))})"
        for entry in unsent or ():
            if isinstance(entry, Mapping) and entry.get("deployment_id"):
                rate_limited.pop(str(entry["deployment_id"]), None)
                out[str(entry["deployment_id"])] = f"rejected before it was sent ({short(str(entry.get('text')))})"
        return cls(out, rate_limited, floor, frozenset(too_long))


def failed_attempts(metadata: Mapping, failed_key: str) -> list[dict]:
    own = metadata.get(failed_key)
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


# ---- the walk's steps -------------------------------------------------------------------------------------------


def select(pairs: Iterable[tuple[Any, DeploymentPlan]], failures: Failures, tokens: int,
           retry_rate_limited: bool) -> tuple[list[tuple[Any, DeploymentPlan]], list[Skip]]:
    """The candidates of the chain in order, and what was passed over (and why) before asking the store."""
    candidates: list[tuple[Any, DeploymentPlan]] = []
    skipped: list[Skip] = []
    out, rate_limited, floor = failures.out, failures.rate_limited, failures.context_floor
    for deployment, plan in pairs:
        ident = plan.deployment_id
        window = plan.context_window
        if out and ident in out:
            skipped.append(Skip(plan, out[ident], failed=True))
        elif rate_limited and ident in rate_limited and not retry_rate_limited:
            skipped.append(Skip(plan, f"answered 429 earlier in this request ({rate_limited[ident]})", failed=True))
        elif window and tokens > window:
            skipped.append(Skip(plan, f"request needs ~{tokens} tokens, context window is {window}", never=True))
        elif floor and window and window <= floor:
            skipped.append(Skip(plan, f"context window {window} is no larger than the {floor} that already "
                                      f"rejected this prompt as too long", never=True))
        else:
            candidates.append((deployment, plan))
    return candidates, skipped


def rate_limited_plans(skipped: Sequence[Skip], failures: Failures, retry_rate_limited: bool) -> list[DeploymentPlan]:
    """Deployments that answered 429 in this request and were passed over: their resets may be waited out (they
    join the walk's one store call as report-only candidates)."""
    if retry_rate_limited or not failures.rate_limited:
        return []
    return [s.plan for s in skipped if s.plan.deployment_id in failures.rate_limited]


def never_fits(group: str, chain_ids: set[str], skipped: Sequence[Skip], blocked: Sequence[Blocked],
               failures: Failures, tokens: int, prompt_tokens: int, max_tokens: int) -> str | None:
    """The 400's message when no deployment of the chain could ever take this request (larger than every context
    window, or than a whole limit): retrying it unchanged cannot help. None: some deployment could."""
    if not skipped and not blocked:
        return None
    never_ids = {s.plan.deployment_id for s in skipped if s.never}
    never_ids |= {b.plan.deployment_id for b in blocked if b.never}
    never_ids |= {s.plan.deployment_id for s in skipped if s.plan.deployment_id in failures.too_long}
    if len(never_ids) < len(chain_ids):
        return None
    windows = [s.plan.context_window for s in skipped if s.never and s.plan.context_window]
    need = f"~{tokens:,} tokens (prompt ~{prompt_tokens:,} + completion {max_tokens:,})"
    limits = [f"{b.counter.label} is {b.counter.limit.capacity:,}" for b in blocked if b.never and b.counter]
    parts = []
    if windows:
        parts.append(f"the largest context window in '{group}' is {max(windows):,}")
    if limits:
        parts.append("; ".join(dict.fromkeys(limits)))
    rejected = [s.plan.model for s in skipped if s.plan.deployment_id in failures.too_long]
    if rejected:
        parts.append(f"{', '.join(rejected)} answered that the prompt exceeds its context window")
    return (f"request needs {need}; " + "; ".join(parts or ["no deployment can take it"])
            + " (send a shorter prompt or a smaller max_tokens)")


@dataclass(frozen=True)
class Wait:
    """Sleep ``seconds`` and walk again; ``rate_limited``: the wait is for a 429's short reset in this request
    (the deployments that answered it are tried again after it)."""

    seconds: float
    rate_limited: bool = False
    waited_for: tuple[Blocked, ...] = ()


def wait_before_retry(group: str, blocked: Sequence[Blocked], failures: Failures, retry_rate_limited: bool,
                      max_wait_s: float, budget_left: float | None, until_deadline: float) -> Wait | None:
    """How long to sleep before walking the chain again, or None to refuse now. ``budget_left``: seconds left of
    the call's time budget (None: no budget); ``until_deadline``: seconds left of this request's ``max_wait_s``."""
    if failures.rate_limited and not retry_rate_limited:
        short_ = [b for b in blocked if not b.never and b.plan.deployment_id in failures.rate_limited]
        if short_:
            # A provider 429 in this request with a short Retry-After, and nothing else can serve: wait it out.
            wait = min(b.wait_s for b in short_) + 0.01
            bound = max(RETRY_AFTER_BOUND_S, max_wait_s)
            if wait <= bound and (budget_left is None or wait < budget_left):
                log.info("router_plugin wait group=%s %.2fs for the reset of %s (429 in this request)",
                         group, wait, ", ".join(sorted({b.plan.model for b in short_})))
                return Wait(wait, True, tuple(short_))
    if max_wait_s <= 0:
        return None
    waits = [b.wait_s for b in blocked if not b.never]
    if not waits:
        return None
    wait = min(waits) + 0.01
    if budget_left is not None and wait >= budget_left:
        return None
    return Wait(wait) if wait <= until_deadline else None


QUOTA, FAILED, COOLING = "quota", "failed", "cooling"


@dataclass(frozen=True)
class Refusal:
    """Why nothing can take the request now. ``kind``: QUOTA (a 429: out of quota), FAILED (every deployment
    failed in this request: 503), COOLING (every deployment set aside after failures: 503 with Retry-After)."""

    kind: str
    message: str
    retry_after_s: float | None


def refusal(group: str, blocked: Sequence[Blocked], skipped: Sequence[Skip],
            describe: Callable[[Blocked], str | None] | None = None) -> Refusal:
    """The refusal of a walk where nothing fits, and its log line (one scrubbed text for both)."""
    if not blocked and any(s.failed for s in skipped):  # nothing is out of quota: providers failed
        said = scrub("; ".join(f"{s.plan.model}: {s.why}" for s in skipped))
        log.info("router_plugin chain failed group=%s reasons=[%s]", group, said)
        return Refusal(FAILED, f"every deployment of '{group}' failed for this request: {said}", None)
    reasons = describe_blocked(blocked, describe) + [f"{s.plan.model}: {s.why}" for s in skipped]
    said = scrub("; ".join(reasons))
    waits = [b.wait_s for b in blocked if not b.never]
    retry_after = min(waits) if waits else None
    if blocked and all(b.counter is None and not b.never for b in blocked):
        # No quota reason at all: every deployment is set aside after failures (its own or other workers'):
        # an outage (503), not a quota refusal; come back when the first cooldown ends.
        log.info("router_plugin chain cooling down group=%s reasons=[%s]", group, said)
        return Refusal(COOLING, f"every deployment of '{group}' is cooling down after failures: {said}", retry_after)
    log.info("router_plugin refuse group=%s reasons=[%s]", group, said)
    return Refusal(QUOTA, f"no deployment of '{group}' can take this request now: " + (said or "no candidates"),
                   retry_after)


def describe_blocked(blocked: Sequence[Blocked], describe: Callable[[Blocked], str | None] | None = None) -> list[str]:
    """One phrase per exhausted pool (two :free models on one account are one pool: named once). ``describe``:
    the admission policy's phrase for a block it caused (a ceiling or a share), used when it has one."""
    seen: dict[tuple[str, str], str] = {}
    for b in blocked:
        if b.counter is None:
            key, text = (b.plan.slot, b.plan.model), f"{b.plan.model} set aside ({b.why}) until {when(b)}"
        elif b.never:
            key, text = (b.plan.slot, b.counter.key), f"{b.counter.label}: request larger than the whole limit"
        else:
            phrase = describe(b) if describe is not None and b.ceiling is not None else None
            label = b.counter.label
            if phrase:
                text = f"{label}: {phrase} until {when(b)}"
            else:
                state = "exhausted" if b.why in ("full", "exhausted") else b.why
                text = f"{label} {state} until {when(b)}"
            key = (b.plan.slot, b.counter.key)
        seen.setdefault(key, text)
    return list(seen.values())


def when(b: Blocked) -> str:
    at = time.strftime("%H:%M:%S UTC", time.gmtime(b.until_ms / 1000))
    return f"{at} (in {human_duration(b.wait_s)})"


# ---- texts ------------------------------------------------------------------------------------------------------

_CONTEXT_NUMBER = re.compile(r"maximum context length is (\d+)", re.IGNORECASE)
_STATUS_IN_TEXT = re.compile(r'"code"\s*:\s*"?(\d{3})\b')
_CONTEXT_WORDS = ("context length", "context_length", "context window", "reduce the length of the messages")


def is_context(kind: str, text: str) -> bool:
    low = text.lower()
    return kind == "ContextWindowExceededError" or any(w in low for w in _CONTEXT_WORDS)


_EXC_PREFIX = re.compile(r"^(?:litellm\.\w+: )?(?:\w+Error: |Timeout: )?")


def short(text: str, n: int = 200) -> str:
    """One line of an exception string, without LiteLLM's repeated class-name prefixes and group suffix, and
    without any key an upstream echoed (redact.py)."""
    text = _EXC_PREFIX.sub("", scrub(text).split("\nLiteLLM: model group", 1)[0].strip())
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
