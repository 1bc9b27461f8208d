"""Counters and a bounded request log for ``GET /_sim/stats``. API keys never appear: only ``key_hash``."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

__all__ = ["Stats", "LIMIT_REASONS"]

#: Reasons that mean "a provider LIMIT was exhausted" (counted in ``rate_limited``; upstream "busy" is not).
LIMIT_REASONS = frozenset({"minute", "day", "rpm", "rpd", "tpm", "tpd"})
PROVIDERS = ("openrouter", "groq")


class Stats:
    def __init__(self, max_log: int = 10_000) -> None:
        self.requests: dict[str, Counter] = {p: Counter() for p in PROVIDERS}
        self.responses: dict[str, Counter] = {p: Counter() for p in PROVIDERS}
        self.rate_limited: Counter = Counter({p: 0 for p in PROVIDERS})
        self.endpoints: Counter = Counter()  # free endpoint GETs: "openrouter /key", "openrouter /models", ...
        self.log: deque[dict[str, Any]] = deque(maxlen=max_log)

    def request(self, provider: str, model: str) -> None:
        self.requests[provider][model] += 1

    def response(self, *, t: float, provider: str, model: str | None, status: int, stream: bool, key_hash: str | None,
                 reason: str | None) -> None:
        self.responses[provider][str(status)] += 1
        if status == 429 and reason in LIMIT_REASONS:
            self.rate_limited[provider] += 1
        self.log.append({"t": t, "provider": provider, "model": model, "status": status, "stream": stream,
                         "key_hash": key_hash, "reason": reason})

    def endpoint(self, provider: str, path: str) -> None:
        self.endpoints[f"{provider} {path}"] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": {p: dict(c) for p, c in self.requests.items()},
            "responses": {p: dict(c) for p, c in self.responses.items()},
            "rate_limited": dict(self.rate_limited),
            "endpoints": dict(self.endpoints),
            "log": list(self.log),
        }
