"""Settles and calibrations off the request's path: this process's counter adjustments, batched.

A reply's settle (the real tokens replace the estimate) and its calibration (the provider's ``remaining`` raises our
count) only correct counters; nothing waits for them. So instead of one round trip each, ``QuotaStore.settle_later``
/ ``calibrate_later`` queue them here and they reach Redis

* **folded into the next reservation** of this process: the same ``reserve_first`` call applies them first
  (``adjust_reserve``: adjust.lua then reserve.lua in one script, one round trip); under load every reservation
  carries what finished since the previous one;
* or, when no reservation comes within ``FLUSH_INTERVAL_S`` (or the queue passes ``FLUSH_AT_OPS``), in one adjust
  call of their own (one per hash slot on a Redis Cluster);
* and at the latest when the event loop closes (``asyncio.run`` returning) or the process exits (``atexit``, through
  a blocking client).

Blocks, cooldowns and refunds stay immediate: they decide other workers' next picks. The queue is bounded
(``MAX_OPS``): past it the oldest are dropped with an ERROR naming how many (never silently). A flush that fails
follows the store's fault policy (``resilient.py``): fail_open applies them to the local limiter (replayed into
Redis when it answers again), fail_closed keeps them queued for the next flush. A flush whose outcome is unknown (the
connection broke after sending) is kept and sent again: a correction may then count twice, never zero times.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..limits import DeploymentPlan

log = logging.getLogger("router_plugin.store")

FLUSH_INTERVAL_S = 0.005  # a queued adjustment waits at most this long for a reservation to carry it
FLUSH_AT_OPS = 256  # ... or less, once this many are queued
MAX_OPS = 20_000  # bounded memory: past this the oldest are dropped (ERROR)


@dataclass
class Deferred:
    """One reply's adjustments: ``ops`` as in ``_codec.adjust_args`` on ``plan``'s counters; ``locally``: what
    fail_open does with them while Redis is unreachable (None: nothing)."""

    plan: DeploymentPlan
    ops: list
    locally: Callable[[], None] | None = None


class AdjustQueue:
    """The process's deferred adjustments (thread-safe: a sync Router's callbacks may run on other threads)."""

    def __init__(self, max_ops: int = MAX_OPS):
        self.max_ops = max_ops
        self._items: deque[Deferred] = deque()
        self._ops = 0
        self._lock = threading.Lock()
        self.dropped = 0
        self.folded = 0  # items carried by a reservation
        self.flushed = 0  # items sent by a flush of their own

    def __len__(self) -> int:
        return self._ops

    def put(self, item: Deferred) -> int:
        """Queue ``item``; returns how many ops are queued now."""
        dropped = 0
        with self._lock:
            self._items.append(item)
            self._ops += len(item.ops)
            while self._ops > self.max_ops and len(self._items) > 1:
                old = self._items.popleft()
                self._ops -= len(old.ops)
                dropped += len(old.ops)
            self.dropped += dropped
            queued = self._ops
        if dropped:
            log.error("router_plugin: %d counter adjustment(s) dropped: more than %d queued while the quota store "
                      "could not take them (the counters may read low until the providers' headers correct them)",
                      dropped, self.max_ops)
        return queued

    def take(self) -> list[Deferred]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._ops = 0
        return items

    def put_back(self, items: list[Deferred]) -> None:
        """Return items a failed flush took (ahead of anything queued since), within the bound."""
        if not items:
            return
        with self._lock:
            queued = list(self._items)
            self._items.clear()
            self._ops = 0
        for item in [*items, *queued]:
            self.put(item)
