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
import logging
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from ..errors import StoreError
from ..limits import Counter, DeploymentPlan
from ..providers.facts import Remaining
from . import _codec
from ._codec import Ask, Blocked, CounterState, KeySpace, Reservation
from ._ops import SyncOperations
from .connect import StoreTarget, resolve_target

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

    @property
    def _scripts(self) -> dict:
        loop = asyncio.get_running_loop()
        scripts = self._per_loop.get(loop)
        if scripts is None:
            client = self._fixed_client if self._fixed_client is not None else self.target.async_client()
            scripts = {name: client.register_script(src) for name, src in _codec.SCRIPTS.items()}
            scripts["client"] = client
            self._per_loop[loop] = scripts
        return scripts

    @property
    def client(self) -> Any:
        return self._scripts["client"]

    async def reserve(
        self, plan: DeploymentPlan, tokens: int, dry: bool = False, counters_only: bool = False
    ) -> Reservation | Blocked:
        keys, args, ask = _codec.reserve_call(self.keys, plan, tokens, self.margin_ms, dry, counters_only)
        try:
            reply = await self._scripts["reserve"](keys=keys, args=args)
        except STORE_FAILURES as exc:
            raise self._error("reserve", exc) from exc
        return _codec.parse_one(ask, reply)

    async def reserve_first(self, asks: Sequence[Ask]) -> Reservation | list[Blocked]:
        """Reserve the first candidate that fits, in order (all its counters, all or none): one round trip for
        the whole chain (on a cluster: one per run of consecutive candidates sharing a slot). None fits: every
        candidate's Blocked, in order (report-only candidates only when blocked)."""
        blocked: list[Blocked] = []
        for group in (_codec.slot_groups(asks) if self.target.cluster else ([list(asks)] if asks else [])):
            keys, args = _codec.first_call(self.keys, group, self.margin_ms)
            try:
                reply = await self._scripts["reserve"](keys=keys, args=args)
            except STORE_FAILURES as exc:
                raise self._error("reserve", exc) from exc
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
        scripts = self._per_loop.pop(asyncio.get_running_loop(), None)
        if scripts is not None:
            await scripts["client"].aclose()


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
