"""The limiters behind the simulated providers. Pure arithmetic on a caller-supplied ``now``; no I/O, no locks.

* :class:`WindowCounter` — a fixed, epoch-aligned window (OpenRouter's clock minute and UTC day, providers.md §1.1).
* :class:`AccountPool` — OpenRouter's one free-model bucket per account: per-minute and per-day counters (§1.1).
* :class:`RefillBucket` — a continuously refilling bucket (GCRA), as Groq's limits behave (§2.2, "INF token-bucket
  refill, matches 6 captures"): the level drains at ``capacity / window`` per second; a cost is admitted iff
  ``level + cost <= capacity``; otherwise the wait is ``(level + cost - capacity) * window / capacity``.
* :class:`GroqLimits` — the four buckets (RPM, RPD, TPM, TPD) of one model in one organisation (§2.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .clock import DAY, MINUTE, window_index, window_reset_ms

__all__ = ["WindowCounter", "AccountPool", "PoolBlock", "RefillBucket", "GroqLimits", "GroqBlock", "GroqCaps"]

#: Float epoch seconds near 1.8e9 resolve to ~2.4e-7 s; anything due within a microsecond counts as due now.
_TIME_EPS = 1e-6


class WindowCounter:
    """Counts events in the current fixed window of ``length`` seconds; a new window starts at zero."""

    __slots__ = ("length", "_index", "_count")

    def __init__(self, length: float) -> None:
        self.length = length
        self._index = -1
        self._count = 0

    def count(self, now: float) -> int:
        return self._count if window_index(now, self.length) == self._index else 0

    def set(self, now: float, value: int) -> None:
        self._index = window_index(now, self.length)
        self._count = value

    def add(self, now: float, n: int = 1) -> int:
        self.set(now, self.count(now) + n)
        return self._count

    def reset_ms(self, now: float) -> int:
        return window_reset_ms(now, self.length)


@dataclass(frozen=True)
class PoolBlock:
    """Why an OpenRouter account pool refused: ``window`` is "minute" or "day"."""

    window: str
    limit: int
    reset_ms: int


class AccountPool:
    """OpenRouter free-model quota of one account, shared by every ``:free`` model (providers.md §1.1).

    The day is checked first: a day-exhausted account gets the per-day 429 even inside a fresh minute.
    Only admitted attempts are counted; what happens afterwards (404 gone, 429 busy upstream, 5xx) does not
    give the attempt back ("Failed attempts still count toward your daily quota").
    """

    __slots__ = ("minute", "day")

    def __init__(self) -> None:
        self.minute = WindowCounter(MINUTE)
        self.day = WindowCounter(DAY)

    def try_admit(self, now: float, *, minute_limit: int, daily_limit: int) -> PoolBlock | None:
        if self.day.count(now) >= daily_limit:
            return PoolBlock("day", daily_limit, self.day.reset_ms(now))
        if self.minute.count(now) >= minute_limit:
            return PoolBlock("minute", minute_limit, self.minute.reset_ms(now))
        self.day.add(now)
        self.minute.add(now)
        return None


class RefillBucket:
    """A bucket of ``capacity`` units that drains continuously over ``window`` seconds (GCRA)."""

    __slots__ = ("capacity", "window", "_level", "_at", "_eps")

    def __init__(self, capacity: float, window: float) -> None:
        if capacity <= 0 or window <= 0:
            raise ValueError("capacity and window must be positive")
        self.capacity = float(capacity)
        self.window = float(window)
        self._level = 0.0
        self._at = -math.inf
        self._eps = _TIME_EPS * self.capacity / self.window  # the same tolerance, in units

    def level(self, now: float) -> float:
        if now > self._at:
            if self._level > 0.0 and self._at != -math.inf:
                self._level = max(0.0, self._level - (now - self._at) * self.capacity / self.window)
            self._at = now
        return self._level

    def fits(self, cost: float, now: float) -> bool:
        return self.level(now) + cost <= self.capacity + self._eps

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` fits (0 when it fits now)."""
        return max(0.0, (self.level(now) + cost - self.capacity) * self.window / self.capacity)

    def add(self, amount: float, now: float) -> None:
        """Add ``amount`` (negative gives units back; the level never goes below zero)."""
        self._level = max(0.0, self.level(now) + amount)

    def remaining(self, now: float) -> int:
        return max(0, math.floor(self.capacity - self.level(now) + self._eps))

    def time_to_empty(self, now: float) -> float:
        """Seconds until the whole capacity is available again (Groq's ``x-ratelimit-reset-*``)."""
        return self.level(now) * self.window / self.capacity


@dataclass(frozen=True)
class GroqCaps:
    """Free-plan limits of one Groq model (providers.md §2.1); ``tpd=None`` means no daily token limit."""

    rpm: int
    rpd: int
    tpm: int
    tpd: int | None


@dataclass(frozen=True)
class GroqBlock:
    """The limit that refused a Groq request: ``name`` in rpm/rpd/tpm/tpd, ``used`` the bucket level."""

    name: str
    limit: int
    used: float
    requested: int
    wait: float


class GroqLimits:
    """The four refill buckets of one (organisation, model): RPM/TPM over 60 s, RPD/TPD over 86 400 s."""

    __slots__ = ("caps", "buckets")

    def __init__(self, caps: GroqCaps) -> None:
        self.caps = caps
        self.buckets: dict[str, RefillBucket] = {
            "rpm": RefillBucket(caps.rpm, MINUTE),
            "rpd": RefillBucket(caps.rpd, DAY),
            "tpm": RefillBucket(caps.tpm, MINUTE),
        }
        if caps.tpd is not None:
            self.buckets["tpd"] = RefillBucket(caps.tpd, DAY)

    @staticmethod
    def _cost(name: str, tokens: int) -> int:
        return 1 if name in ("rpm", "rpd") else tokens

    def try_admit(self, tokens: int, now: float) -> GroqBlock | None:
        """Reserve one request and ``tokens`` in every bucket, or none; on refusal name the limit with the
        longest wait (so its "try again in" is when the request can really pass)."""
        worst: GroqBlock | None = None
        for name, bucket in self.buckets.items():
            cost = self._cost(name, tokens)
            if not bucket.fits(cost, now):
                block = GroqBlock(name, int(bucket.capacity), bucket.level(now), cost, bucket.wait(cost, now))
                if worst is None or block.wait > worst.wait:
                    worst = block
        if worst is not None:
            return worst
        for name, bucket in self.buckets.items():
            bucket.add(self._cost(name, tokens), now)
        return None

    def settle_tokens(self, delta: int, now: float) -> None:
        """Correct the token buckets by ``actual - reserved`` once the usage is known."""
        for name in ("tpm", "tpd"):
            if name in self.buckets:
                self.buckets[name].add(delta, now)

    def refund(self, tokens: int, now: float) -> None:
        """Give a whole reservation back (Groq does not charge 503s, providers.md §2.3)."""
        for name, bucket in self.buckets.items():
            bucket.add(-self._cost(name, tokens), now)
