"""Who used the pools: served requests per pool, per priority and per key / team each UTC day, and per minute over
the last hour (the rate ``router-plugin status`` forecasts from). Best effort and off the request's path.

The callbacks call ``usage_book(store).served(plan, metadata)`` when a request was served: it only adds to
in-process counts; at most once per ``FLUSH_S`` a background task writes them in one pipelined round trip
(HINCRBY + PEXPIREAT per hash). A process that dies loses at most its last second of counts; a store that is
down loses them (nothing is retried, nothing else depends on them). Keys, all in the pool's hash slot::

    <prefix>{<slot>}:use:<utc day>    hash  p:<priority> -> served, k:<key label> -> served, t:<team> -> served
                                            (kept 2 days; a key label is its alias or the first 8 characters of
                                            a fingerprint of LiteLLM's key hash: never a key)
    <prefix>{<slot>}:rate:<utc hour>  hash  <epoch minute> -> served (kept 2 hours)
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import Counter as Tally
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("router_plugin")

FLUSH_S = 1.0
DAY_S, HOUR_S = 86_400, 3_600


def day_key(prefix: str, slot: str, day: int) -> str:
    return f"{prefix}{{{slot}}}:use:{day}"


def rate_key(prefix: str, slot: str, hour: int) -> str:
    return f"{prefix}{{{slot}}}:rate:{hour}"


def _priority(metadata: Mapping) -> int:
    try:
        from .priority import priority_of
    except ImportError:  # pragma: no cover - before issue 17's policy module
        priority_of = None
    try:
        return int(priority_of(metadata)) if priority_of else max(0, int(metadata.get("priority", 0) or 0))
    except Exception:
        return 0


def _who(metadata: Mapping) -> list[str]:
    """``k:<label>`` for a LiteLLM virtual key, ``t:<team>`` for its team (labels only, never a key)."""
    out = []
    try:
        from .priority import share_identity
    except ImportError:  # pragma: no cover
        share_identity = None
    if share_identity is not None:
        for per, tag in (("key", "k"), ("team", "t")):
            who = share_identity(metadata, per)
            if who is not None:
                out.append(f"{tag}:{who[1]}")
    return out


class UsageBook:
    def __init__(self, store: Any, flush_s: float = FLUSH_S):
        self.store = store
        self.prefix = store.keys.prefix
        self.flush_s = flush_s
        self.day: Tally = Tally()  # (slot, day, field) -> n
        self.rate: Tally = Tally()  # (slot, hour, minute) -> n
        self._pending: Any = None  # the loop a flush is scheduled on

    def served(self, plan: Any, metadata: Any, now_s: float | None = None) -> None:
        """Count one served request of ``plan``'s pool (in memory; flushed within ``flush_s``)."""
        if not getattr(plan, "metered", False):
            return
        now_s = time.time() if now_s is None else now_s
        metadata = metadata if isinstance(metadata, Mapping) else {}
        day, minute = int(now_s // DAY_S), int(now_s // 60)
        self.day[(plan.slot, day, f"p:{_priority(metadata)}")] += 1
        for field in _who(metadata):
            self.day[(plan.slot, day, field)] += 1
        self.rate[(plan.slot, minute // 60, minute)] += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a sync caller: flushed by the next async one
        if self._pending is not loop:  # none pending, or pending on a loop that has ended (asyncio.run per job)
            self._pending = loop
            loop.call_later(self.flush_s, lambda: asyncio.ensure_future(self.flush()))

    async def flush(self) -> None:
        self._pending = None
        day, rate = self.day, self.rate
        if not day and not rate:
            return
        self.day, self.rate = Tally(), Tally()
        guard = getattr(self.store, "guard", None)
        if guard is not None and not guard.reachable:
            return
        try:
            pipe = self.store.client.pipeline(transaction=False)
            expiry: dict[str, int] = {}
            for (slot, d, field), n in day.items():
                key = day_key(self.prefix, slot, d)
                pipe.hincrby(key, field, n)
                expiry[key] = (d + 2) * DAY_S * 1000
            for (slot, hour, minute), n in rate.items():
                key = rate_key(self.prefix, slot, hour)
                pipe.hincrby(key, str(minute), n)
                expiry[key] = (hour + 2) * HOUR_S * 1000
            for key, at in expiry.items():
                pipe.pexpireat(key, at)
            await pipe.execute()
        except Exception as exc:  # best effort: never disturb serving
            log.debug("router_plugin: could not write usage counts: %s", exc)


_BOOKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def usage_book(store: Any) -> UsageBook:
    book = _BOOKS.get(store)
    if book is None:
        book = _BOOKS[store] = UsageBook(store)
    return book


# ---- reading (``router-plugin status``, sync client) -------------------------------------------------------------

def read_usage(client: Any, prefix: str, slot: str, now_s: float) -> dict[str, Any]:
    """Today's served counts per priority / key / team and the last hour's per-minute counts of one pool."""
    day, hour, minute = int(now_s // DAY_S), int(now_s // HOUR_S), int(now_s // 60)
    raw = client.hgetall(day_key(prefix, slot, day))
    per: dict[str, dict[str, int]] = {"priority": {}, "key": {}, "team": {}}
    for field, n in raw.items():
        field = field.decode() if isinstance(field, bytes) else str(field)
        tag, _, name = field.partition(":")
        where = {"p": "priority", "k": "key", "t": "team"}.get(tag)
        if where:
            per[where][name] = int(n)
    last_hour = 0
    for h in (hour - 1, hour):
        for m, n in client.hgetall(rate_key(prefix, slot, h)).items():
            m = int(m)
            if minute - 60 < m <= minute:
                last_hour += int(n)
    per["priority"] = dict(sorted(per["priority"].items(), key=lambda kv: int(kv[0])))
    return {**per, "last_hour": last_hour}


def forecast(remaining: int, capacity: int, resets_at: float | None, last_hour: int, now_s: float,
             rolling: bool = False) -> dict[str, Any]:
    """At the last hour's rate, when does the day run out? ``{"rate_per_h", "runs_out_at" (epoch s | None),
    "lasts": True when it outlasts the day's reset}``. ``rolling``: a day that refills continuously (Groq,
    capacity / 24 h): it runs out only while the rate beats the refill, and has no reset to outlast."""
    rate = float(last_hour)
    if remaining <= 0:
        return {"rate_per_h": rate, "runs_out_at": now_s, "lasts": False}
    if rolling:
        net = rate - capacity / 24.0
        if net <= 0:
            return {"rate_per_h": rate, "runs_out_at": None, "lasts": True}
        return {"rate_per_h": rate, "runs_out_at": now_s + remaining / net * HOUR_S, "lasts": False}
    if rate <= 0:
        return {"rate_per_h": 0.0, "runs_out_at": None, "lasts": True}
    at = now_s + remaining / rate * HOUR_S
    end_of_day = resets_at if resets_at is not None else (int(now_s // DAY_S) + 1) * DAY_S
    return {"rate_per_h": rate, "runs_out_at": at if at < end_of_day else None, "lasts": at >= end_of_day}
