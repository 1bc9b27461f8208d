"""The stream guard's state machine: one streamed call's hops and the decisions between them (pure: no LiteLLM,
no Redis, no clock of its own — the adapter feeds it plain values and clock readings).

The adapter (``router_plugin.adapter.streams``) reads LiteLLM's chunks and exceptions and hands this machine what
they mean — a text delta, a finish reason, the provider's own finish reason when LiteLLM kept it, a usage count,
an exception it could not read, a silence — and the machine answers:

* **relay** — the chunk goes to the caller (:meth:`StreamCall.chunk` returns);
* **broken off** — :class:`Broke` is raised, naming what happened for people (``why``) and, when the plugin
  detected it itself (LiteLLM fired no failure event), the fault to book (``fact``);
* **continue on the next deployment** — :meth:`StreamCall.after` gives a :class:`TakeOver`; :meth:`StreamCall.request`
  gives that hop's messages (the conversation plus the partial answer as an assistant prefill, or given back as the
  model's turn with :data:`~router_plugin.prefill.CONTINUE_INSTRUCTION` for a model that takes no prefill) and
  its ``max_tokens`` reduced by what was delivered;
* **stop with this error text** — a :class:`Stop`: the budget ran out, a tool call cannot move, or no deployment
  could take the answer over; its text names the *original* failure first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from ..config import Timeouts
from ..prefill import CONTINUE_INSTRUCTION
from ..providers.facts import Fact, ServerError
from ..redact import scrub
from .deadlines import FAILED_KEY
from .deadlines import _short as short

log = logging.getLogger("router_plugin")

#: After the provider's finish chunk, wait at most this long for the usage chunk / end of body (no ``[DONE]``).
FINISH_GRACE_S = 1.0
#: LiteLLM's repeated class-name prefixes on exception text ("litellm.APIError: APIError: ...").
_PREFIX = re.compile(r"^(?:litellm\.\w+: )?(?:\w+Error: |Timeout: )?")
#: The request parameters a continuation reduces by what the caller already has.
TOKEN_CAPS = ("max_tokens", "max_completion_tokens")


@dataclass
class Hop:
    """One stream of the call, as the machine sees it: which deployment (its plugin record), what it delivered."""

    state: Mapping[str, Any]  # the strategy's record of the attempt: deployment_id, model, attempts, ...
    first_token_by: float | None  # epoch seconds: the first content chunk is due by then (None: from the limits)
    content_chars: int = 0
    finish: str | None = None  # the finish reason relayed (the answer is complete once the body ends)
    usage_tokens: int = 0

    @property
    def model(self) -> str:
        return str(self.state.get("model") or "?")


@dataclass(eq=False)
class Broke(Exception):
    """A hop ended without a complete answer."""

    why: str  # for people: "stream cut after 31 characters: APIConnectionError: ..."
    fact: Fact | None = None  # set when the plugin detected it (LiteLLM fired no failure event)
    exc: BaseException | None = None
    cool: bool = True
    budget: bool = False


@dataclass(frozen=True)
class Wait:
    """How long to wait for the hop's next chunk, whether the call's budget is what binds, and what is awaited."""

    seconds: float
    budget_bound: bool
    phase: str  # "first token" | "chunk" | "end of stream"


@dataclass(frozen=True)
class Stop:
    """No deployment finishes the answer: the caller gets this error text (``budget``: the budget's error)."""

    text: str
    budget: bool = False
    exc: BaseException | None = None  # the original failure, when it was an exception


@dataclass(frozen=True)
class TakeOver:
    """Open the next hop; ``continuation``: the caller has part of the answer (else the request restarts)."""

    continuation: bool


#: Verdicts of :meth:`StreamCall.take_over_failed` other than a :class:`Stop`.
RESTATE = "restate"  # the deployment refused the prefill: ask it again without one (and remember that)
NEXT = "next"  # the deployment refused the continuation: it is out, ask the next one


@dataclass
class StreamCall:
    """One streamed call: what the caller has been given, every hop, and what is out of this call."""

    model: str
    messages: list
    limits: Timeouts
    deadline: float  # epoch seconds: the call's budget ends then
    parts: list[str] = field(default_factory=list)
    delivered_chunks: int = 0
    tool_calls: bool = False
    hops: list[dict] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    first_failure: Broke | None = None
    no_continuation: list[str] = field(default_factory=list)
    attempts: int = 0
    restate_ids: set = field(default_factory=set)  # deployments that refused a prefill in this call

    # ---- one hop: relay, or say how it broke off ---------------------------------------------------------

    def wait(self, hop: Hop, now: float) -> Wait:
        """How long to wait for the hop's next chunk at clock reading ``now``."""
        if hop.finish is not None:
            wait, phase = min(self.limits.stream_idle_s, FINISH_GRACE_S), "end of stream"
        elif hop.content_chars == 0:
            by = hop.first_token_by if hop.first_token_by is not None else now + self.limits.first_token_s
            wait, phase = max(0.0, by - now), "first token"
        else:
            wait, phase = self.limits.stream_idle_s, "chunk"
        left = max(0.0, self.deadline - now)
        return Wait(left, True, phase) if left < wait else Wait(wait, False, phase)

    def chunk(self, hop: Hop, *, content: str | None = None, finish: str | None = None,
              provider_finish: str | None = None, finish_known: bool = False, usage_tokens: int | None = None,
              tool_calls: bool = False) -> None:
        """A chunk arrived: book it for relaying, or raise :class:`Broke`. ``provider_finish`` is the finish reason
        the provider itself sent, when the adapter can tell (``finish_known``); a ``finish`` with none from the
        provider is the transport's synthetic "stop" on a body that just ended."""
        if finish is not None and hop.finish is None:
            if finish == "error" or provider_finish == "error":
                raise Broke(f"stream from {hop.model} ended with finish_reason 'error' after "
                            f"{hop.content_chars} characters", ServerError(None, "finish_reason error"))
            if finish_known and provider_finish is None:
                raise self._no_finish(hop)
            hop.finish = finish
        if usage_tokens is not None:
            hop.usage_tokens = usage_tokens
        if tool_calls:
            self.tool_calls = True
        if content:
            self.parts.append(content)
            self.delivered_chunks += 1
            hop.content_chars += len(content)

    def ended(self, hop: Hop) -> None:
        """The body ended: complete after a finish reason, else :class:`Broke` (no finish reason)."""
        if hop.finish is None:
            raise self._no_finish(hop)

    def silent(self, hop: Hop, wait: Wait) -> None:
        """Nothing arrived within ``wait``. Returns when the hop had finished (its body just never ended: the
        answer is complete and the adapter books it); raises :class:`Broke` otherwise."""
        if hop.finish is not None:
            log.info("router_plugin: %s finished but sent no end of stream; ending the answer", hop.model)
            return
        if wait.budget_bound:
            raise Broke(f"the {self.limits.total_s:g} s budget ran out while {hop.model} was streaming",
                        ServerError(None, "cut short by the call's budget"), cool=False, budget=True)
        raise Broke(f"stream from {hop.model} sent no {wait.phase} within {wait.seconds:g} s "
                    f"({'stalled' if hop.content_chars else 'no first token'})",
                    ServerError(None, f"stream silent for {wait.seconds:g} s ({wait.phase})"))

    def failed(self, hop: Hop, exc: BaseException, timed_out: bool = False) -> Broke:
        """The transport or an in-band error chunk failed the hop (LiteLLM books these itself: no ``fact``)."""
        if timed_out:
            return Broke(f"stream from {hop.model} failed: {describe(exc)}", exc=exc)
        return Broke(f"stream from {hop.model} broke off after {hop.content_chars} characters: {describe(exc)}",
                     exc=exc)

    @staticmethod
    def _no_finish(hop: Hop) -> Broke:
        return Broke(f"stream from {hop.model} ended after {hop.content_chars} characters with no finish reason",
                     ServerError(None, "stream ended without a finish reason"))

    def complete(self, hop: Hop) -> None:
        self.hops.append({"model": hop.model, "outcome": "complete", "chars": hop.content_chars})

    def broke(self, hop: Hop, broke: Broke) -> None:
        """Record a hop that broke off: its deployment is out of this call; the first failure is what is named."""
        log.warning("router_plugin: %s", broke.why)
        if hop.state.get("deployment_id"):
            self.excluded.append({"deployment_id": str(hop.state["deployment_id"]), "why": short(broke.why, 160)})
        self.hops.append({"model": hop.model, "outcome": "broke off", "chars": hop.content_chars,
                          "why": short(broke.why, 200)})
        if self.first_failure is None:
            self.first_failure = broke

    # ---- between hops: who takes over, with which messages ---------------------------------------------------

    @property
    def delivered(self) -> int:
        """Characters of the answer the caller has."""
        return sum(len(p) for p in self.parts)

    def after(self, broke: Broke, now: float) -> Stop | TakeOver:
        """A hop broke off (and was recorded): stop, or open the next hop."""
        original = self.first_failure or broke
        if broke.budget or now >= self.deadline:
            return Stop(f"{original.why}; the {self.limits.total_s:g} s budget ran out before another deployment "
                        "could finish the answer", budget=True)
        if self.tool_calls:
            return self.interrupted(original, "a tool call cannot be continued on another model")
        return TakeOver(continuation=bool(self.parts))

    def request(self, continuation: bool, restate: bool, caps: Mapping[str, Any]) -> tuple[list, dict]:
        """The next hop's messages, and its token caps (``max_tokens`` / ``max_completion_tokens`` of ``caps``)
        reduced by what the caller already has; only the caps present and integer are returned."""
        messages = list(self.messages)
        reduced: dict = {}
        if continuation:
            messages.append({"role": "assistant", "content": "".join(self.parts)})
            if restate:  # a model that takes no prefill: the partial answer as its turn, then "go on from there"
                messages.append({"role": "user", "content": CONTINUE_INSTRUCTION})
            for key in TOKEN_CAPS:
                value = caps.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    reduced[key] = max(1, value - self.delivered_chunks)
        return messages, reduced

    def out_of_call(self, failed: Iterable[Any]) -> set[str]:
        """Deployment ids this call will not ask again: those that broke off, and ``failed`` (the attempts' record)."""
        out = {str(e.get("deployment_id")) for e in self.excluded}
        return out | {str(e.get("deployment_id")) for e in failed or () if isinstance(e, Mapping)}

    def nobody_took_over(self, original: Broke, exc: BaseException) -> Stop:
        """The chain had no deployment left to take the answer over (refused, spent or out of budget)."""
        return self.interrupted(original, f"no other deployment could take it over ({plain(exc)})")

    def take_over_failed(self, original: Broke, exc: BaseException, state: Mapping[str, Any], *,
                         continuation: bool, restate: bool, rejects: bool) -> Stop | str:
        """The hop meant to take over failed to open (``state``: its attempt's record; ``rejects``: the provider
        rejected the request itself, HTTP 400/422). :data:`RESTATE`: it refused the prefill — ask it again without
        one (the adapter remembers the refusal for every worker, then calls :meth:`forget_failure`); :data:`NEXT`:
        it refused the continuation — it is out, ask the next; else a :class:`Stop`."""
        deployment_id = state.get("deployment_id")
        if continuation and rejects and deployment_id:
            who = str(state.get("model") or deployment_id)
            if not restate:
                log.info("router_plugin: %s does not take an assistant prefill (%s); continuing without one",
                         who, describe(exc))
                self.restate_ids.add(str(deployment_id))
                self.hops.append({"model": who, "outcome": "refused the prefill", "chars": 0,
                                  "why": short(describe(exc), 200)})
                return RESTATE
            log.info("router_plugin: %s does not accept a continuation (%s)", who, describe(exc))
            self.no_continuation.append(who)
            self.excluded.append({"deployment_id": str(deployment_id), "why": "does not accept a continuation"})
            self.hops.append({"model": who, "outcome": "refused the continuation", "chars": 0,
                              "why": short(describe(exc), 200)})
            return NEXT
        return self.interrupted(original, f"taking it over failed too ({describe(exc)})")

    @staticmethod
    def forget_failure(records: Iterable[MutableMapping[str, Any]], deployment_id: str, attempt: int) -> None:
        """Drop a refused prefill from this call's failure record (in each metadata dict of ``records``), so the
        strategy may choose that deployment again for the continuation without one (the attempt stays counted in
        ``attempts`` and ``hops``)."""
        for md in records:
            failed = md.get(FAILED_KEY)
            if isinstance(failed, list):
                md[FAILED_KEY] = [e for e in failed if not (isinstance(e, Mapping) and str(e.get("deployment_id"))
                                                            == deployment_id and int(e.get("attempt") or 0) == attempt)]

    def interrupted(self, original: Broke, then: str) -> Stop:
        """The answer cannot be finished: the original failure first, what the caller has, then why not."""
        text = original.why
        if self.delivered:
            text += f"; the caller has the first {self.delivered} characters"
            if self.no_continuation:
                then = f"{then}; no continuation support on: {', '.join(self.no_continuation)}"
        return Stop(f"{text}; {then}", exc=original.exc)

    def summary(self, state: Mapping[str, Any] | None) -> dict:
        """What the caller reads as the plugin's record: the serving attempt's, every attempt, every hop."""
        summary = dict(state) if isinstance(state, Mapping) else {}
        summary.pop("owner", None)
        summary.pop("first_token_by", None)
        summary["attempts"] = self.attempts
        summary["hops"] = [dict(h) for h in self.hops]
        if self.hops:
            summary["continued"] = bool(self.first_failure and self.parts)
        return summary


# ---- wording -----------------------------------------------------------------------------------------------------

def describe(exc: BaseException) -> str:
    """``Class: message`` in one short line, scrubbed of keys."""
    return f"{type(exc).__name__}: {short(scrub(plain(exc)), 240)}"


def plain(exc: BaseException) -> str:
    """The exception's message without LiteLLM's repeated class-name prefixes and model-group suffix."""
    text = str(getattr(exc, "message", None) or exc).split("\nLiteLLM: model group", 1)[0]
    text = _PREFIX.sub("", text).replace("router_plugin: ", "", 1)
    return text.strip()


__all__ = ["FINISH_GRACE_S", "NEXT", "RESTATE", "Broke", "Hop", "Stop", "StreamCall", "TakeOver", "Wait",
           "describe", "plain"]
