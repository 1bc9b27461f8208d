"""Time for the simulator: an injectable clock and the calendar windows the providers use.

OpenRouter's free-tier windows are calendar-aligned (providers.md §1.1): the minute is a fixed window
aligned to wall-clock minutes, the day is the UTC day (reset at 00:00:00Z). Resets are reported in epoch
milliseconds (§1.2). Unix time has no leap seconds, so ``floor(t / 86400)`` is the UTC day.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

__all__ = ["Clock", "ManualClock", "MINUTE", "DAY", "window_index", "window_reset_ms"]

#: A clock is any callable returning epoch seconds (float), like :func:`time.time`.
Clock = Callable[[], float]

MINUTE = 60.0
DAY = 86_400.0


def window_index(now: float, length: float) -> int:
    """Index of the fixed window of ``length`` seconds (aligned to the epoch) that contains ``now``."""
    return int(now // length)


def window_reset_ms(now: float, length: float) -> int:
    """Epoch milliseconds at which the window containing ``now`` ends (next minute / next UTC midnight)."""
    return (window_index(now, length) + 1) * int(length * 1000)


class ManualClock:
    """A clock that only moves when told to, for tests and benchmarks.

    >>> c = ManualClock(1_800_000_000.0); c.advance(61); c()
    1800000061.0
    """

    def __init__(self, start: float | None = None) -> None:
        self._t = float(time.time() if start is None else start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._t

    def set(self, t: float) -> None:
        with self._lock:
            self._t = float(t)

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._t += seconds
            return self._t
