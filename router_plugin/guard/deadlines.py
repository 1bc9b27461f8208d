"""The call's deadline and one attempt's clock: plain Python, no LiteLLM (router_plugin.adapter.timeouts and
streams.py enforce them through LiteLLM's hooks).

The metadata keys travel in LiteLLM's request metadata; every value is a plain float / list / dict (LiteLLM copies
metadata).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ..config import Timeouts

#: Request metadata key: the call's deadline, epoch seconds (a plain float: LiteLLM copies metadata).
DEADLINE_KEY = "router_plugin_deadline"
#: Request metadata key: one plain dict per failed attempt, {deployment_id, attempt, status, type, text}, written
#: as the attempt fails (before LiteLLM's loop asks the strategy again): the strategy's retry decisions read it.
FAILED_KEY = "router_plugin_failed"
#: Request metadata key: deployments streams.py took out of this call, [{deployment_id, why}] (a stream broke off).
EXCLUDE_KEY = "router_plugin_exclude"


def deadline_of(metadata: Mapping[str, Any] | None) -> float | None:
    value = metadata.get(DEADLINE_KEY) if isinstance(metadata, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def remaining_s(metadata: Mapping[str, Any] | None) -> float | None:
    """Seconds left of the call's budget; None when the call has no budget (e.g. a bare Router call)."""
    deadline = deadline_of(metadata)
    return None if deadline is None else deadline - time.time()


def request_metadata(kwargs: dict) -> dict:
    """The metadata dict LiteLLM will carry for this request (created when absent), as the strategy reads it."""
    for name in ("metadata", "litellm_metadata"):
        value = kwargs.get(name)
        if isinstance(value, dict):
            return value
    kwargs["metadata"] = {}
    return kwargs["metadata"]


def transport_timeout(limits: Timeouts, stream: bool, budget_left: float | None) -> httpx.Timeout:
    """The backstop given to LiteLLM's HTTP client for one attempt (aiohttp: sock_connect, sock_read)."""
    read = max(limits.first_token_s, limits.stream_idle_s) if stream else limits.connect_s + limits.first_token_s
    connect = limits.connect_s
    if budget_left is not None:
        read, connect = min(read, max(budget_left, 0.05)), min(connect, max(budget_left, 0.05))
    return httpx.Timeout(read, connect=connect)


@dataclass
class AttemptClock:
    """The deadlines of the attempt running in this context; moved on when its headers arrive."""

    stream: bool
    started: float  # loop time
    headers_by: float
    first_token_by: float
    budget_by: float | None  # loop time of the call's deadline
    scope: asyncio.Timeout | None = None
    headers_at: float | None = None

    def limit(self, when: float) -> float:
        return when if self.budget_by is None else min(when, self.budget_by)

    def headers_received(self) -> None:
        if self.headers_at is not None:
            return
        self.headers_at = asyncio.get_running_loop().time()
        if self.scope is not None and self.stream and not self.scope.expired():
            self.scope.reschedule(self.limit(self.first_token_by))

    def pause(self) -> None:
        """The strategy is waiting for a reset or its turn (max_wait_s): only the call's budget runs meanwhile."""
        if self.scope is not None and not self.scope.expired() and self.headers_at is None:
            self.scope.reschedule(self.budget_by)

    def restart(self) -> None:
        """The attempt starts now: it waited for its turn before a deployment was chosen (max_wait_s), and that
        wait is not the deployment's silence. The call's budget still bounds it."""
        shift = asyncio.get_running_loop().time() - self.started
        if shift <= 0 or self.headers_at is not None:
            return
        self.started += shift
        self.headers_by += shift
        self.first_token_by += shift
        if self.scope is not None and not self.scope.expired():
            self.scope.reschedule(self.limit(self.headers_by if self.stream else self.first_token_by))

    @property
    def phase(self) -> str:
        if not self.stream:
            return "reply"
        return "first token" if self.headers_at is not None else "response headers"

    @property
    def phase_limit_s(self) -> float:
        end = self.first_token_by if (not self.stream or self.headers_at is not None) else self.headers_by
        return round(end - self.started, 3)

    @property
    def cut_by_budget(self) -> bool:
        end = self.first_token_by if (not self.stream or self.headers_at is not None) else self.headers_by
        return self.budget_by is not None and self.budget_by < end


def _tried(metadata: Mapping[str, Any]) -> str:
    """What the call tried so far: failed attempts, and streams that broke off (streams.py)."""
    seen = []
    for entry in metadata.get(FAILED_KEY) or ():
        if isinstance(entry, Mapping):
            seen.append(f"{entry.get('model')}: {_short(str(entry.get('text') or entry.get('type')), 160)}")
    for entry in metadata.get(EXCLUDE_KEY) or ():
        if isinstance(entry, Mapping) and entry.get("why"):
            seen.append(str(entry["why"]))
    return "tried: " + "; ".join(seen) if seen else "nothing answered"


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
