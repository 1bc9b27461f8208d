"""The quota store: every worker's counters in one Redis.

``QuotaStore`` (asyncio, the request path) and ``SyncQuotaStore`` (CLI, sync callers) are thin: the keys, the
script arguments and the replies live in ``_codec``; the atomic logic lives in the ``.lua`` files beside it.
``open_stores`` gives both wrapped for Redis faults (``resilient.py``: fail_open to a per-process share held by
``local.py``, an in-process twin of the scripts, or fail_closed), after checking the server (``connect.py``:
Redis/Valkey >= 7, ``maxmemory-policy noeviction``) and its marker.

**The store marker** ``<key_prefix>store:marker`` (no TTL) tells a store that is running from one that came back
empty (a new server, a restart without persistence, a flush). ``ensure_marker()`` (sync store) / ``await
ensure_marker()`` (async store) sets it and returns True when it was missing: ``SET NX``, so of several processes
exactly one sees True per empty event. The stores ``open_stores`` returns also take ``on_empty(callback)``: the
callback is called with a reason (``"open"``, ``"reconnect"`` after an outage, ``"check"``: a periodic check, every
``MARKER_CHECK_S``, found it gone, e.g. Redis restarted between two requests) in the process that found the
store empty; registered after an empty open, it is called at once with ``"open"``.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import weakref
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

import redis

from ..errors import StoreError
from ..limits import Counter, DeploymentPlan
from ..providers.facts import Remaining
from . import _codec
from ._codec import Ask, Blocked, CounterState, KeySpace, Reservation
from ._ops import SyncOperations
from .batch import FLUSH_AT_OPS, FLUSH_INTERVAL_S, AdjustQueue, Deferred
from .connect import StoreTarget, resolve_target
from .lane import Lane, LaneAddress

__all__ = [
    "MARKER_CHECK_S",
    "Ask",
    "Blocked",
    "CounterState",
    "QuotaStore",
    "Reservation",
    "StoreTarget",
    "SyncQuotaStore",
    "open_stores",
    "resolve_target",
]

log = logging.getLogger("router_plugin.store")

MARKER_CHECK_S = 30.0  # how often a healthy resilient store checks that its marker is still there


def marker_key(prefix: str) -> str:
    return f"{prefix}store:marker"


def _marker_value() -> str:
    import time

    return "router_plugin store since " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# What a store call can fail with when Redis is down, slow or half-configured (a cluster that lost a node).
STORE_FAILURES: tuple[type[BaseException], ...] = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


# One count per UTC day of provider values bounded (providers/bounds.py), with the commands the least-privilege ACL
# of SECURITY.md already allows (HMGET / HSET / PEXPIREAT inside EVALSHA); kept two days.
_COUNT_CLAMPED = """
local n = (tonumber(redis.call('HMGET', KEYS[1], 'n')[1]) or 0) + 1
redis.call('HSET', KEYS[1], 'n', n)
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return n
"""


class _Base:
    def __init__(self, target: StoreTarget, prefix: str = "rp:", arrival_margin_s: float = 2.0):
        self.target = target
        self.keys = KeySpace(prefix)
        self.margin_ms = int(arrival_margin_s * 1000)

    def _error(self, action: str, exc: BaseException) -> StoreError:
        return StoreError(
            f"quota store {self.target.describe()} failed to {action}: {type(exc).__name__}: {str(exc).rstrip('.')}. "
            f"Check that Redis is running and reachable, or set router_plugin.redis_url."
        )


class QuotaStore(_Base):
    """Async store used inside LiteLLM's event loop. One round trip per reservation.

    An asyncio Redis connection belongs to the loop that opened it, and services that call ``asyncio.run``
    per job get a new loop each time: the store keeps one client per running loop.
    """

    def __init__(self, target: StoreTarget, prefix: str = "rp:", client: Any = None, arrival_margin_s: float = 2.0):
        super().__init__(target, prefix, arrival_margin_s)
        self._fixed_client = client
        self._per_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.lane_allowed = True  # False: every call through redis-py (the adapter sets it per LiteLLM line)
        self.deferred = AdjustQueue()  # settles and calibrations not yet in Redis (batch.py)
        self._timers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> flush timer
        self._flushing: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> flush task in flight
        self._closers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> its close hook
        _LIVE.add(self)

    @property
    def _scripts(self) -> dict:
        loop = asyncio.get_running_loop()
        scripts = self._per_loop.get(loop)
        if scripts is None:
            client = self._fixed_client if self._fixed_client is not None else self.target.async_client()
            scripts = {name: client.register_script(src) for name, src in _codec.SCRIPTS.items()}
            scripts["client"] = client
            address = LaneAddress.of(self.target) if self._fixed_client is None and self.lane_allowed else None
            scripts["lane"] = Lane(address) if address is not None else None  # the reservations' path (lane.py)
            self._per_loop[loop] = scripts
        return scripts

    def _start_script(self, name: str, keys: list, args: list) -> Awaitable[Any]:
        """Start a reservation script (``reserve``, ``adjust_reserve``): through this loop's lane when the target
        allows one (lane.py: with its connection open, the command is written before this returns), else through
        redis-py (sent when awaited)."""
        scripts = self._scripts
        lane = scripts["lane"]
        if lane is not None:
            return lane.start_evalsha(scripts[name], keys, args)
        return scripts[name](keys=keys, args=args)

    @property
    def client(self) -> Any:
        return self._scripts["client"]

    async def reserve(
        self, plan: DeploymentPlan, tokens: int, dry: bool = False, counters_only: bool = False
    ) -> Reservation | Blocked:
        keys, args, ask = _codec.reserve_call(self.keys, plan, tokens, self.margin_ms, dry, counters_only)
        try:
            reply = await self._start_script("reserve", keys, args)
        except STORE_FAILURES as exc:
            raise self._error("reserve", exc) from exc
        return _codec.parse_one(ask, reply)

    async def reserve_first(self, asks: Sequence[Ask]) -> Reservation | list[Blocked]:
        """Reserve the first candidate that fits, in order (all its counters, all or none): one round trip for
        the whole chain (on a cluster: one per run of consecutive candidates sharing a slot). None fits: every
        candidate's Blocked, in order (report-only candidates only when blocked)."""
        # QuotaStore's own, not an override: the resilient store's start_reserve_first guards the call again, and a
        # call guarded twice turned each failure into an outage and its local answer into a recovery
        return await QuotaStore.start_reserve_first(self, asks)

    def start_reserve_first(self, asks: Sequence[Ask]) -> Awaitable[Reservation | list[Blocked]]:
        """``reserve_first`` whose (first) call is already on its way to Redis when this returns, if this loop's
        lane is open: await the result for the answer. Await it always: a call sent is a reservation made."""
        groups = self._slot_groups(asks)
        return self._first_answer(groups, self._start_group(groups[0]) if groups else None)

    async def peek_first(self, asks: Sequence[Ask]) -> Reservation | list[Blocked]:
        """Would ``reserve_first(asks)`` reserve one now? The same check at the same cost, nothing reserved (the
        chosen candidate's Reservation holds nothing): one round trip, like ``reserve_first``. The proxy's fast
        refusals (adapter/proxy.py) ask this before answering a 429 in front of LiteLLM."""
        groups = self._slot_groups(asks)
        return await self._first_answer(groups, self._start_group(groups[0], True) if groups else None, True)

    def _slot_groups(self, asks: Sequence[Ask]) -> list[list[Ask]]:
        """One script call per group: the whole chain on one Redis; on a cluster, each run of one slot."""
        return _codec.slot_groups(asks) if self.target.cluster else ([list(asks)] if asks else [])

    def _start_group(self, group: list[Ask], dry: bool = False) -> tuple[Awaitable[Any], list | None]:
        call = (_codec.dry_first_call if dry else _codec.first_call)(self.keys, group, self.margin_ms)
        carried = self.deferred.take() if not self.target.cluster and len(self.deferred) else None
        try:
            if carried:  # this process's deferred settles ride along: applied first, same round trip
                return self._start_script("adjust_reserve", *_codec.folded_call(_codec.adjust_call(self.keys, carried),
                                                                                 call)), carried
            return self._start_script("reserve", *call), None
        except BaseException as exc:  # raised when awaited, with the same bookkeeping
            return _raising(exc), carried

    async def _first_answer(self, groups: list[list[Ask]], first: tuple[Awaitable[Any], list | None] | None,
                            dry: bool = False) -> Reservation | list[Blocked]:
        blocked: list[Blocked] = []
        for i, group in enumerate(groups):
            pending, carried = first if i == 0 else self._start_group(group, dry)
            try:
                reply = await pending
            except BaseException as exc:
                if carried:
                    self.deferred.put_back(carried)
                    self._schedule_flush()
                if isinstance(exc, STORE_FAILURES):
                    raise self._error("reserve", exc) from exc
                raise
            if carried:
                self.deferred.folded += len(carried)
            outcome = _codec.parse_first(group, reply)
            if isinstance(outcome, Reservation):
                return outcome
            blocked += outcome
        return blocked

    async def peek(self, plan: DeploymentPlan, counters_only: bool = False) -> Reservation | Blocked:
        return await self.reserve(plan, 0, dry=True, counters_only=counters_only)

    async def settle(self, reservation: Reservation, actual_tokens: int, seen: Iterable[Remaining] = ()) -> None:
        """Replace the token estimate with the real usage; ``seen``: the provider's rate-limit headers of the same
        reply, calibrated in the same round trip."""
        await self._adjust(reservation.plan, _codec.settle_ops(reservation, actual_tokens, seen))

    async def refund(self, reservation: Reservation, requests: bool = False) -> None:
        await self._adjust(reservation.plan, _codec.refund_ops(reservation, requests))

    async def calibrate(self, plan: DeploymentPlan, facts: Iterable[Remaining]) -> None:
        await self._adjust(plan, _codec.calibrate_ops(plan, facts))

    # ---- deferred adjustments (batch.py): off the request's path, folded into the next reservation ----------

    def settle_later(self, reservation: Reservation, actual_tokens: int, seen: Iterable[Remaining] = ()) -> None:
        """``settle`` without a round trip of its own: queued, then carried by this process's next reservation
        or flushed within ``FLUSH_INTERVAL_S`` (batch.py)."""
        self._defer(reservation.plan, _codec.settle_ops(reservation, actual_tokens, seen))

    def calibrate_later(self, plan: DeploymentPlan, facts: Iterable[Remaining]) -> None:
        """``calibrate`` (raise-only) without a round trip of its own (see ``settle_later``)."""
        self._defer(plan, _codec.calibrate_ops(plan, facts))

    def _defer(self, plan: DeploymentPlan, ops: list, locally: Any = None) -> None:
        if not ops:
            return
        queued = self.deferred.put(Deferred(plan, ops, locally))
        self._schedule_flush(soon=queued >= FLUSH_AT_OPS)

    def _schedule_flush(self, soon: bool = False) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop here: send them now, blocking
            self.flush_blocking()
            return
        if loop not in self._closers:
            self._watch(loop)
        if soon:
            self._start_flush(loop)
        elif self._timers.get(loop) is None:
            self._timers[loop] = loop.call_later(FLUSH_INTERVAL_S, self._start_flush, loop)

    def _start_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timers.pop(loop, None)
        running = self._flushing.get(loop)
        if not len(self.deferred) or (running is not None and not running.done()) or loop.is_closed():
            return  # nothing queued, or the flush in flight takes what is queued when it is done
        self._flushing[loop] = loop.create_task(self.flush())

    async def flush(self) -> None:
        """Send every deferred adjustment now: one adjust call (one per hash slot on a cluster)."""
        while len(self.deferred):
            if not await self._send_deferred(self.deferred.take()):
                return  # failed: kept queued (or applied locally, resilient.py) — tried again later

    async def _send_deferred(self, items: list[Deferred]) -> bool:
        """Send ``items``; False when the store failed (what was not sent is queued again)."""
        groups = _by_slot(items) if self.target.cluster else [items]
        for i, group in enumerate(groups):
            try:
                await self._send_group(group)
            except asyncio.CancelledError:
                self.deferred.put_back([item for g in groups[i:] for item in g])
                raise
            except (*STORE_FAILURES, StoreError) as exc:
                self.deferred.put_back([item for g in groups[i:] for item in g])
                log.error("router_plugin: quota store %s failed to take %d deferred counter adjustment(s) (%s: %s); "
                          "kept to send again", self.target.describe(), len(self.deferred), type(exc).__name__,
                          str(exc)[:200])
                return False
        self.deferred.flushed += len(items)
        return True

    async def _send_group(self, group: list[Deferred]) -> None:
        keys, args = _codec.adjust_call(self.keys, group)
        await self._scripts["adjust"](keys=keys, args=args)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush when ``loop`` closes (``asyncio.run`` returning): an async generator the loop finalises at its
        shutdown (``shutdown_asyncgens`` runs after the tasks are cancelled, before the loop closes)."""
        closer = self._until_loop_closes()
        self._closers[loop] = closer
        try:  # its first step, now: the loop's first-iteration hook registers it for shutdown_asyncgens
            closer.__anext__().send(None)
        except StopIteration:
            pass

    async def _until_loop_closes(self):
        try:
            while True:
                yield
        finally:
            if len(self.deferred):
                try:
                    async with asyncio.timeout(self.target.timeout_s * 3):
                        await self.flush()
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    pass  # still queued: the exit flush (atexit) sends them

    def flush_blocking(self) -> None:
        """Send what is deferred through a blocking client (process exit, or no event loop). A failure is
        logged with the count lost, never silent."""
        items = self.deferred.take()
        if not items:
            return
        client = None
        try:
            client = self.target.sync_client()
            script = client.register_script(_codec.SCRIPTS["adjust"])
            for group in (_by_slot(items) if self.target.cluster else [items]):
                keys, args = _codec.adjust_call(self.keys, group)
                script(keys=keys, args=args)
            self.deferred.flushed += len(items)
        except Exception as exc:  # noqa: BLE001 - at exit: say what was lost, never raise
            lost = sum(len(item.ops) for item in items)
            log.error("router_plugin: %d counter adjustment(s) could not be written to the quota store %s at exit "
                      "(%s: %s); the counters read low until the providers' headers correct them", lost,
                      self.target.describe(), type(exc).__name__, str(exc)[:200])
        finally:
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: BLE001
                    pass

    async def block(self, plan: DeploymentPlan, counter: Counter, until_ms: int, why: str, for_ms: int = 0) -> int:
        """Block one counter for every worker until ``until_ms`` (or for ``for_ms`` from Redis TIME); returns its end."""
        return (await self._mark(self.keys.counter(plan, counter), _codec.block_args(until_ms, why, for_ms)))[0]

    async def cool(
        self, plan: DeploymentPlan, why: str, base_s: float, max_s: float, escalate: bool = True, until_ms: int = 0
    ) -> int:
        """Set one model aside for every worker; returns how many times it was set aside recently (strikes)."""
        args = _codec.mark_args(until_ms, int(base_s * 1000), escalate, int(max_s * 1000), why)
        return (await self._mark(self.keys.model(plan), args))[1]

    async def count_clamped(self, day: int) -> None:
        """Count one provider value bounded on UTC day ``day`` (shown by ``router-plugin status``). Best effort: a
        store that is down (or known down by a resilient store's guard) loses the count, nothing else."""
        guard = getattr(self, "guard", None)
        if guard is not None and not guard.reachable:
            return
        try:
            await self.client.register_script(_COUNT_CLAMPED)(keys=[self.keys.clamped(day)],
                                                                args=[(day + 2) * 86_400_000])
        except (*STORE_FAILURES, StoreError) as exc:
            log.debug("router_plugin: could not count a clamped provider value: %s", exc)

    async def _adjust(self, plan: DeploymentPlan, ops: list) -> None:
        if not ops:
            return
        try:
            await self._scripts["adjust"](
                keys=[self.keys.counter(plan, op[0]) for op in ops], args=_codec.adjust_args(ops)
            )
        except STORE_FAILURES as exc:
            raise self._error("adjust counters", exc) from exc

    async def _mark(self, key: str, args: list) -> tuple[int, int]:
        try:
            reply = await self._scripts["mark"](keys=[key], args=args)
        except STORE_FAILURES as exc:
            raise self._error("record a block", exc) from exc
        return int(reply[0]), int(reply[1])

    async def ensure_marker(self) -> bool:
        """Set the store marker; True if it was missing (the store is empty: new, restarted without data, flushed)."""
        try:
            return bool(await self.client.set(marker_key(self.keys.prefix), _marker_value(), nx=True))
        except STORE_FAILURES as exc:
            raise self._error("check the store marker", exc) from exc

    async def check_server(self) -> None:
        """Refuse a server that must not hold the store (Redis < 7, an eviction policy): StoreError."""
        from .connect import acheck_server

        try:
            await acheck_server(self.target, self.client)
        except STORE_FAILURES as exc:
            raise self._error("check the server", exc) from exc

    async def aclose(self) -> None:
        if len(self.deferred):
            await self.flush()
        scripts = self._per_loop.pop(asyncio.get_running_loop(), None)
        if scripts is not None:
            if scripts["lane"] is not None:
                scripts["lane"].close()
            await scripts["client"].aclose()


_LIVE: "weakref.WeakSet[QuotaStore]" = weakref.WeakSet()


async def _raising(exc: BaseException) -> Any:
    raise exc


#: Called at exit before the deferred adjustments are flushed: work that may still defer some (the adapter adds
#: LiteLLM's own exit flush of success callbacks, whichever of the two atexit handlers runs first).
BEFORE_EXIT: list = []


@atexit.register
def _flush_at_exit() -> None:
    """Nothing deferred is lost when a worker exits normally (see batch.py)."""
    for hook in list(BEFORE_EXIT):
        try:
            hook()
        except Exception as exc:  # noqa: BLE001 - at exit: never raise
            log.debug("router_plugin: an exit hook failed: %s", exc)
    for store in list(_LIVE):
        store.flush_blocking()


def _by_slot(items: list[Deferred]) -> list[list[Deferred]]:
    groups: dict[str, list[Deferred]] = {}
    for item in items:
        groups.setdefault(item.plan.slot, []).append(item)
    return list(groups.values())


class SyncQuotaStore(SyncOperations, _Base):
    """The same operations, blocking: for the CLI, tests and sync ``Router.completion``."""

    def __init__(self, target: StoreTarget, prefix: str = "rp:", client: Any = None, arrival_margin_s: float = 2.0):
        super().__init__(target, prefix, arrival_margin_s)
        self._client = client
        self._registered: dict | None = None

    @property
    def client(self) -> Any:
        """Made on first use: a cluster client asks the nodes for the slot map when it is built."""
        if self._client is None:
            self._client = self.target.sync_client()
        return self._client

    @property
    def _scripts(self) -> dict:
        if self._registered is None:
            client = self.client
            self._registered = {name: client.register_script(src) for name, src in _codec.SCRIPTS.items()}
        return self._registered

    @property
    def cluster(self) -> bool:  # one reserve_first call per slot group
        return self.target.cluster

    def _run_reserve(self, keys: list, args: list) -> list:
        try:
            return self._scripts["reserve"](keys=keys, args=args)
        except STORE_FAILURES as exc:
            raise self._error("reserve", exc) from exc

    def clamped_on(self, day: int) -> int:
        """How many provider values were bounded on UTC day ``day`` (see ``QuotaStore.count_clamped``)."""
        try:
            return int(self.client.hmget(self.keys.clamped(day), "n")[0] or 0)
        except STORE_FAILURES as exc:
            raise self._error("read the clamp count", exc) from exc

    def _adjust(self, plan: DeploymentPlan, ops: list) -> None:
        if not ops:
            return
        try:
            self._scripts["adjust"](keys=[self.keys.counter(plan, op[0]) for op in ops], args=_codec.adjust_args(ops))
        except STORE_FAILURES as exc:
            raise self._error("adjust counters", exc) from exc

    def _mark(self, key: str, args: list) -> tuple[int, int]:
        try:
            reply = self._scripts["mark"](keys=[key], args=args)
        except STORE_FAILURES as exc:
            raise self._error("record a block", exc) from exc
        return int(reply[0]), int(reply[1])

    def ensure_marker(self) -> bool:
        """Set the store marker; True if it was missing (the store is empty: new, restarted without data, flushed)."""
        try:
            return bool(self.client.set(marker_key(self.keys.prefix), _marker_value(), nx=True))
        except STORE_FAILURES as exc:
            raise self._error("check the store marker", exc) from exc

    def check_server(self) -> None:
        """Refuse a server that must not hold the store (Redis < 7, an eviction policy): StoreError."""
        from .connect import check_server

        try:
            check_server(self.target, self.client)
        except STORE_FAILURES as exc:
            raise self._error("check the server", exc) from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def open_stores(target: StoreTarget, prefix: str = "rp:", *, arrival_margin_s: float = 2.0,
                on_store_error: str = "fail_open", expected_workers: int = 4):
    """The async and sync stores of one router, sharing one fault policy (see ``resilient.py``).

    The server is checked now (``check_server``: StoreError for Redis < 7 or an eviction policy; the embedded server
    is started) and the marker set; if Redis cannot be reached now, both happen at the first reconnect.
    """
    from .resilient import open_resilient

    store, sync_store = open_resilient(target, prefix, arrival_margin_s=arrival_margin_s,
                                       on_store_error=on_store_error, expected_workers=expected_workers)
    sync_store.guard.open_check(sync_store)
    return store, sync_store
