"""Waiting in order: with ``max_wait_s > 0``, the requests of a model group that must wait are admitted in priority
order (0 first), first come first served within a priority, across every worker.

The line lives in Redis (``queue.lua``), one per model group: a sorted set of tickets scored by (priority,
arrival number), a heartbeat per ticket, and a wake key per ticket. Only the first ``heads`` tickets (default 1)
may walk the chain and try to reserve; the others wait without polling: each blocks on its own wake key
(``BLPOP``), which the script pushes when the ticket becomes a head (the ticket ahead left: admitted, refused at
its deadline, cancelled, or dead). A waiter wakes otherwise only to renew its ticket, every ``beat_s`` (a third of
``ticket_ttl_s``): a worker that dies leaves a ticket nobody renews, and the next script call drops it, so it
holds the line for at most ``ticket_ttl_s``. The line is bounded: past ``max_waiters`` tickets a newcomer is
refused at once (``LineFull``).

A newcomer with nobody ahead of it (no waiter of its priority or a more urgent one) walks the chain at once, as
without a line (one extra round trip, ``ahead``); it joins the line only once it has to wait.

Fail open: while the quota store is known unreachable (a resilient store's guard), a turn waits in an in-process
line (``LocalLine``: the same order among this worker's requests, no order across workers); if a queue call fails
in the middle of a turn, that turn falls back to plain timed sleeps (the wait as before the line existed).

Usage (the strategy's ``max_wait_s`` loop)::

    turn = WaitQueue(store).turn(group, priority, deadline_monotonic)
    try:
        while True:
            if not await turn.may_try():      # not at the head: sleep until woken, the deadline, or a beat
                if turn.expired: raise ...    # turn.refusal_text()
                await turn.sleep(None)
                continue
            ... walk, reserve; return on success ...
            await turn.sleep(wait)            # the head: until the reset it was told, or woken
    finally:
        await turn.leave()

``async with queue.turn(group, priority) as turn`` does the ``leave`` for you.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
import os
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from ..errors import StoreError

log = logging.getLogger("router_plugin.store")

SCRIPT = Path(__file__).with_name("queue.lua").read_text()
MAX_PRIORITY = 4095
DEFAULT_MAX_WAITERS = 1000
DEFAULT_TICKET_TTL_S = 15.0


def priority_of(metadata: Any) -> int:
    """``metadata["priority"]`` as an int (0 = interactive, the default; higher = less urgent), clamped to
    0..4095. Uses router_plugin.priority's reading when it is there."""
    try:
        from ..priority import priority_of as policy_priority_of  # issue 17 items 1-3
    except ImportError:
        policy_priority_of = None
    if policy_priority_of is not None:
        try:
            value = int(policy_priority_of(metadata))
        except Exception:
            value = 0
    else:
        raw = metadata.get("priority", 0) if isinstance(metadata, dict) else 0
        try:
            value = int(raw)
        except (TypeError, ValueError):
            value = 0
    return min(MAX_PRIORITY, max(0, value))


class LineFull(Exception):
    """The group's line already holds ``max_waiters`` tickets: refuse instead of queueing."""

    def __init__(self, group: str, waiting: int, most: int):
        super().__init__(f"{waiting} requests are already waiting for '{group}' (router_plugin.max_waiters is "
                         f"{most}); refused at once instead of queueing — retry later or raise max_waiters")
        self.group, self.waiting, self.most = group, waiting, most


def line_keys(prefix: str, group: str) -> tuple[list[str], str]:
    """The line's three keys and the wake-key prefix; one hash tag per group (one Redis Cluster slot)."""
    tag = "{q:" + group.replace("{", "(").replace("}", ")") + "}"
    base = f"{prefix}{tag}"
    return [f"{base}:line", f"{base}:alive", f"{base}:seq"], f"{base}:wake:"


def waiting_by_priority(client: Any, prefix: str, group: str) -> dict[int, int]:
    """Who is waiting in ``group``'s line now (sync client): {priority: tickets} (dead tickets not yet dropped
    are counted until their heartbeat ends; ``router-plugin status``)."""
    keys, _ = line_keys(prefix, group)
    now_ms = _redis_ms(client.time())
    alive = {m for m, _ in client.zrangebyscore(keys[1], now_ms, "+inf", withscores=True)}
    out: dict[int, int] = {}
    for member, score in client.zrange(keys[0], 0, -1, withscores=True):
        if member in alive:
            p = int(score // (1 << 40))
            out[p] = out.get(p, 0) + 1
    return dict(sorted(out.items()))


def _redis_ms(reply) -> int:
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


class WaitQueue:
    """The waiting lines of one router's model groups (see the module doc)."""

    def __init__(self, store: Any, *, max_waiters: int = DEFAULT_MAX_WAITERS, heads: int = 1,
                 ticket_ttl_s: float = DEFAULT_TICKET_TTL_S, beat_s: float | None = None):
        self.store = store
        self.prefix = store.keys.prefix
        self.max_waiters = max(1, int(max_waiters))
        self.heads = max(1, int(heads))
        self.ttl_ms = max(100, int(ticket_ttl_s * 1000))
        self.beat_s = beat_s if beat_s is not None else ticket_ttl_s / 3
        self._per_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.local = LocalLine()
        self.warned_at = -1e9

    # ---- Redis plumbing -------------------------------------------------------------------------------------
    def _clients(self) -> dict:
        loop = asyncio.get_running_loop()
        got = self._per_loop.get(loop)
        if got is None:
            client = self.store.client
            target = getattr(self.store, "target", None)
            # BLPOP holds its connection while it waits: a client of its own, whose reply timeout outlasts a beat
            blocking = (dataclasses.replace(target, timeout_s=self.beat_s + target.timeout_s + 1).async_client()
                        if target is not None and hasattr(target, "async_client") else client)
            got = {"client": client, "script": client.register_script(SCRIPT), "blocking": blocking}
            self._per_loop[loop] = got
        return got

    async def call(self, group: str, op: str, ticket: str = "", priority: int = 0) -> list[int]:
        keys, wake = line_keys(self.prefix, group)
        clients = self._clients()
        reply = await clients["script"](keys=keys, args=[op, ticket, priority, self.ttl_ms, self.max_waiters,
                                                         self.heads, wake])
        return [int(x) for x in reply]

    async def blpop(self, group: str, ticket: str, timeout_s: float) -> bool:
        _, wake = line_keys(self.prefix, group)
        got = await self._clients()["blocking"].blpop([wake + ticket], timeout=max(0.01, round(timeout_s, 3)))
        return got is not None

    def reachable(self) -> bool:
        guard = getattr(self.store, "guard", None)
        return guard is None or guard.reachable

    # ---- the public surface -----------------------------------------------------------------------------------
    def turn(self, group: str, priority: int = 0, deadline: float | None = None) -> "Turn":
        """One request's place in ``group``'s line; ``deadline``: time.monotonic() past which it stops waiting."""
        return Turn(self, group, min(MAX_PRIORITY, max(0, int(priority))), deadline)

    async def waiting(self, group: str) -> int:
        return (await self.call(group, "ahead", "", MAX_PRIORITY))[1]


_FAILURES: tuple[type[BaseException], ...]
try:
    import redis

    _FAILURES = (redis.RedisError, OSError, StoreError, asyncio.TimeoutError)
except ImportError:  # pragma: no cover
    _FAILURES = (OSError, StoreError, asyncio.TimeoutError)


class Turn:
    """A request's place in the line. ``mode``: "redis" (shared line), "local" (in-process line: the store is
    down), "plain" (a queue call failed: timed sleeps, no order)."""

    def __init__(self, queue: WaitQueue, group: str, priority: int, deadline: float | None):
        self.queue = queue
        self.group = group
        self.priority = priority
        self.deadline = deadline
        self.ticket = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.joined = False
        self.rank = 0
        self.waiting = 0
        self.ahead_at_arrival: int | None = None
        self.mode = "redis" if queue.reachable() else "local"
        self.started = time.monotonic()
        self.calls = 0  # queue round trips of this turn (tests: no busy polling)

    async def __aenter__(self) -> "Turn":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.leave()

    @property
    def head(self) -> bool:
        return self.rank < self.queue.heads

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _degrade(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self.queue.warned_at >= 60.0:  # once a minute, not once per waiting request
            self.queue.warned_at = now
            log.warning("router_plugin: the waiting line of '%s' is unavailable (%s: %s); requests wait without "
                        "their place in line", self.group, type(exc).__name__, exc)
        self.mode = "plain"
        self.rank = 0

    async def _call(self, op: str) -> list[int]:
        self.calls += 1
        return await self.queue.call(self.group, op, self.ticket, self.priority)

    async def may_try(self) -> bool:
        """May this request walk the chain now? (A newcomer: nobody of its priority or a more urgent one waits.)"""
        if self.mode == "plain":
            return True
        if self.mode == "local":
            return self.queue.local.may_try(self)
        if not self.joined:
            if self.ahead_at_arrival is None:
                try:
                    ahead, self.waiting = await self._call("ahead")
                except _FAILURES as exc:
                    self._degrade(exc)
                    return True
                self.ahead_at_arrival = ahead
                if ahead:  # somebody is before us: take a ticket now, without walking
                    await self._join()
                    return self.mode == "plain" or (self.joined and self.head)
            return True
        return self.head

    async def _join(self) -> None:
        try:
            rank, waiting, _ = await self._call("join")
        except _FAILURES as exc:
            self._degrade(exc)
            return
        if rank == -1:
            raise LineFull(self.group, waiting, self.queue.max_waiters)
        self.joined, self.rank, self.waiting = True, rank, waiting

    async def _beat(self) -> None:
        try:
            rank, waiting, _ = await self._call("beat")
        except _FAILURES as exc:
            self._degrade(exc)
            return
        if rank == -2:  # our ticket died (this worker stalled past the ttl): back in line, at the end
            self.joined = False
            await self._join()
            return
        self.rank, self.waiting = rank, waiting

    async def sleep(self, wait: float | None) -> None:
        """The head: until ``wait`` seconds pass (the reset it was told) or it is woken. Others: until they become
        a head, or the deadline. Renews the ticket every ``beat_s``. Raises ``LineFull`` on joining a full line."""
        if self.mode == "plain":
            await asyncio.sleep(min(wait if wait is not None else self.queue.beat_s, self._left()))
            return
        if self.mode == "local":
            await self.queue.local.sleep(self, wait)
            return
        if not self.joined:
            await self._join()
            if self.mode == "plain":
                await asyncio.sleep(min(wait if wait is not None else self.queue.beat_s, self._left()))
                return
        end = None if (wait is None or not self.head) else time.monotonic() + wait
        while True:
            limit = self._left()
            if end is not None:
                limit = min(limit, end - time.monotonic())
            if limit <= 0:
                return
            try:
                self.calls += 1
                woken = await self.queue.blpop(self.group, self.ticket, min(limit, self.queue.beat_s))
            except _FAILURES as exc:
                self._degrade(exc)
                return
            was_head = self.head
            await self._beat()
            if self.mode == "plain":
                return
            if woken and self.head:
                return
            if self.head and not was_head:
                return  # moved up while we slept (a ticket ahead died or left without waking us)
            if self.head and end is None:
                return

    def _left(self) -> float:
        if self.deadline is None:
            return self.queue.beat_s
        return max(0.0, self.deadline - time.monotonic())

    async def leave(self) -> None:
        if self.mode == "local":
            self.queue.local.leave(self)
            return
        if not self.joined or self.mode == "plain":
            return
        self.joined = False
        try:
            await asyncio.shield(self._call("leave"))
        except (*_FAILURES, asyncio.CancelledError) as exc:  # its heartbeat ends it within ticket_ttl_s
            log.debug("router_plugin: could not leave the line of '%s': %s", self.group, exc)

    def refusal_text(self) -> str:
        waited = time.monotonic() - self.started
        return (f"waited {waited:.1f}s in line for '{self.group}' (priority {self.priority}, "
                f"{max(0, self.rank)} ahead of it, {self.waiting} waiting) and max_wait_s ran out")


class LocalLine:
    """The in-process twin of the line, used while the store is unreachable (fail_open): the same order among
    this process's requests (priority, then arrival), woken through asyncio, nothing shared across workers."""

    def __init__(self) -> None:
        self._heap: dict[str, list] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._count = itertools.count()

    def _first(self, group: str) -> str | None:
        heap = self._heap.get(group) or []
        return heap[0][2] if heap else None

    def may_try(self, turn: Turn) -> bool:
        if not turn.joined:
            heap = self._heap.get(turn.group) or []
            if any(p <= turn.priority for p, _, _ in heap):
                self._join(turn)
                return self._first(turn.group) == turn.ticket
            return True
        return self._first(turn.group) == turn.ticket

    def _join(self, turn: Turn) -> None:
        heapq.heappush(self._heap.setdefault(turn.group, []), (turn.priority, next(self._count), turn.ticket))
        self._events[turn.ticket] = asyncio.Event()
        turn.joined = True

    async def sleep(self, turn: Turn, wait: float | None) -> None:
        if not turn.joined:
            self._join(turn)
        head = self._first(turn.group) == turn.ticket
        limit = turn._left() if (wait is None or not head) else min(wait, turn._left())
        event = self._events[turn.ticket]
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, limit))
        except asyncio.TimeoutError:
            pass

    def leave(self, turn: Turn) -> None:
        if not turn.joined:
            return
        turn.joined = False
        heap = self._heap.get(turn.group) or []
        was_first = self._first(turn.group) == turn.ticket
        heap[:] = [e for e in heap if e[2] != turn.ticket]
        heapq.heapify(heap)
        self._events.pop(turn.ticket, None)
        if was_first and heap:
            event = self._events.get(heap[0][2])
            if event is not None:
                event.set()
