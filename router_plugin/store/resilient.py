"""The quota store when Redis fails: ``on_store_error: fail_open`` (default) or ``fail_closed``.

Both stores of a router (async for the request path, sync for the CLI and ``Router.completion``) share one
``StoreGuard``: the state of Redis, this process's local limiter, and what must be replayed when Redis is back.

* **Healthy**: every call goes to Redis. The clients' connect and read timeouts are ``redis_timeout_s`` and they
  never sleep to retry (``connect.py``), so a dead or hung Redis costs a request one ``redis_timeout_s``. There is
  no deadline over a whole call on top: on a busy event loop a healthy call can take longer in several short
  waits, and that is not an outage; nor is a client timeout while the event loop itself ran late (``LoopLag``:
  a 100 ms tick notes how late timers fire): that call is tried again.
* **A call fails** (connection refused, timeout, cluster down, any Redis error): the guard logs once, at ERROR,
  that the store is unreachable and what happens now, and opens the circuit: no request touches Redis again
  until the next probe, ``probe_interval_s`` (2 s) later. One call per interval is let through to Redis as the
  probe; every other call is answered at once, without network.
* **fail_open**: while the circuit is open, calls are served by ``LocalQuotaStore`` (``local.py``: the same
  algorithm as the Lua scripts, in process) over plans whose every capacity is this worker's share,
  ``max(1, capacity // expected_workers)``. With ``expected_workers`` set to the number of processes that share
  the Redis, all of them together stay within each limit during an outage, in every window. A counter this
  worker saw in Redis shortly before (the ``remaining`` of its last reservation, same window) starts the
  outage already holding the part of its share that was used: its share of what was *left*, so an outage late in
  the day does not hand out a whole new day. Its clock is the last Redis ``TIME`` seen, carried forward on the
  monotonic clock: windows stay aligned with the shared ones and a worker's wrong wall clock still changes nothing. Blocks and cooldowns learnt from providers meanwhile
  are kept locally and queued. Refusals say "this worker's share ... while the quota store is unreachable".
* **fail_closed**: while the circuit is open, calls raise ``StoreError`` naming the store (never its password)
  and the setting; the retry policy never retries a ``RouterPluginError``.
* **Redis answers again** (a probe, or a call already in flight, succeeded): the guard logs the recovery at WARNING and replays into Redis
  what this worker used locally (the units in each counter's current window or bucket, which Redis has never
  seen) and the queued blocks and cooldowns, so that every worker's shared counters are right again. Settling a
  reservation made locally goes to wherever its cost is counted: the local limiter until the replay, Redis after.
  The local limiter keeps its state, so repeated outages within one window still hold to one share.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from ..errors import StoreError
from ..limits import Counter, DeploymentPlan
from ..providers.facts import Remaining
from . import MARKER_CHECK_S, STORE_FAILURES, QuotaStore, SyncQuotaStore, _codec, _marker_value, marker_key
from ._codec import Ask, Blocked, Reservation
from .connect import StoreTarget, acheck_server, check_server, ensure_embedded
from .local import LocalQuotaStore

log = logging.getLogger("router_plugin.store")

FAIL_OPEN, FAIL_CLOSED = "fail_open", "fail_closed"
PROBE_INTERVAL_S = 2.0
_MAX_TRACKED = 50_000  # local reservations awaiting settlement, and queued marks: bounded memory


@dataclass
class _Baseline:
    """What of a local counter has already been replayed into Redis."""

    units: float
    at_ms: int
    window: int


@dataclass
class Replay:
    """Local usage and marks that Redis has not seen: applied when it answers again."""

    adjust: dict = field(default_factory=dict)  # slot -> (real plan, [ops])
    marks: list = field(default_factory=list)  # (redis key, mark args)

    def __bool__(self) -> bool:
        return bool(self.adjust or self.marks)

    def merge(self, other: "Replay") -> None:
        for slot, (plan, ops) in other.adjust.items():
            self.adjust.setdefault(slot, (plan, []))[1].extend(ops)
        self.marks.extend(other.marks)


@dataclass(frozen=True)
class GuardStatus:
    mode: str
    reachable: bool
    down_for_s: float
    last_error: str
    outages: int
    local_grants: int
    local_refusals: int


class StoreGuard:
    """Health of the shared store, the circuit, the local share limiter and the replay. Thread-safe."""

    def __init__(self, target: StoreTarget, prefix: str = "rp:", *, arrival_margin_s: float = 2.0,
                 on_store_error: str = FAIL_OPEN, expected_workers: int = 4,
                 probe_interval_s: float = PROBE_INTERVAL_S):
        if on_store_error not in (FAIL_OPEN, FAIL_CLOSED):
            raise ValueError(f"on_store_error must be {FAIL_OPEN} or {FAIL_CLOSED}, got {on_store_error!r}")
        self.target = target
        self.mode = on_store_error
        self.workers = max(1, int(expected_workers))
        self.probe_interval_s = probe_interval_s
        self.local = LocalQuotaStore(prefix, arrival_margin_s, clock_ms=self.now_ms)
        self._lock = threading.RLock()
        self._down_since: float | None = None  # monotonic
        self._next_probe = 0.0
        self._last_error = ""
        self._redis_ms: int | None = None  # last Redis TIME seen, and when (monotonic)
        self._redis_mono = 0.0
        self._shares: dict[DeploymentPlan, DeploymentPlan] = {}
        self._touched: dict[str, tuple[DeploymentPlan, Counter, Counter]] = {}  # key -> plan, counter, share counter
        self._baselines: dict[str, _Baseline] = {}
        self._seen_left: dict[str, tuple[int, int]] = {}  # counter key -> (remaining, Redis ms) last seen in Redis
        self._seeded: set[str] = set()  # counters started from _seen_left in this outage
        self.local_tally: dict[tuple[str, int], float] = {}  # (fixed counter key, window) -> units admitted locally
        self._owned: OrderedDict[tuple, int] = OrderedDict()  # local reservation -> count, until replayed
        self._queued_marks: OrderedDict[str, list] = OrderedDict()
        self._pending = Replay()  # a replay that failed half-way, retried at the next recovery
        self.outages = 0
        self.local_grants = 0
        self.local_refusals = 0
        # the server check and the store marker (see store/__init__.py)
        self._empty_callbacks: list[Callable[[str], Any]] = []
        self.empty_at_open = False
        self._check_reason: str | None = None  # a check owed: "open" (Redis was down at open), "reconnect"
        self._marker_next = time.monotonic() + MARKER_CHECK_S
        self.empty_events: list[str] = []  # reasons, in order: what this process found (tests, status)

    # ---- server check and marker ---------------------------------------------------------------------------

    def open_check(self, sync_store: Any) -> None:
        """At open: check the server (StoreError if it must not be used) and set the marker. If Redis cannot be
        reached now, both are owed to the first call that reaches it."""
        try:
            check_server(self.target, sync_store.client)
            was_empty = _raw_ensure_marker(sync_store)
        except STORE_FAILURES as exc:
            log.warning("router_plugin: quota store %s cannot be reached at open (%s: %s); its server check and "
                        "marker wait for the first call that reaches it", self.target.describe(),
                        type(exc).__name__, str(exc)[:200])
            self._check_reason = "open"
            return
        if was_empty:
            self.empty_at_open = True
            self.found_empty("open")

    def on_empty(self, callback: Callable[[str], Any]) -> None:
        """``callback(reason)`` whenever this process finds the store without its marker (see store/__init__.py);
        at once with ``"open"`` if it was found so at open."""
        self._empty_callbacks.append(callback)
        if self.empty_at_open:
            self._call(callback, "open")

    def found_empty(self, reason: str) -> None:
        self.empty_events.append(reason)
        # a new store at open is routine (DEBUG); one that lost its data while in use is not (WARNING)
        log.log(logging.DEBUG if reason == "open" else logging.WARNING,
                "router_plugin: quota store %s has no marker (%s): it is new or came back empty; the shared "
                "counters start from zero", self.target.describe(), reason)
        for callback in list(self._empty_callbacks):
            self._call(callback, reason)

    @staticmethod
    def _call(callback: Callable[[str], Any], reason: str) -> None:
        try:
            result = callback(reason)
            if inspect.isawaitable(result):
                try:
                    asyncio.get_running_loop().create_task(result)
                except RuntimeError:
                    asyncio.run(result)
        except Exception:  # noqa: BLE001 - a hook must never break the store
            log.exception("router_plugin: an on_empty callback failed")

    def due_check(self) -> str | None:
        """A successful call just reached Redis: the check it owes now ("open", "reconnect", "check"), or None."""
        with self._lock:
            now = time.monotonic()
            reason = self._check_reason
            if reason is None and now < self._marker_next:
                return None
            self._check_reason = None
            self._marker_next = now + MARKER_CHECK_S
            return reason or "check"

    def check_failed(self, reason: str, exc: BaseException) -> None:
        if isinstance(exc, StoreError) and not isinstance(exc.__cause__, STORE_FAILURES):  # the server was judged
            log.error("router_plugin: %s", exc)
            return
        log.debug("router_plugin: store check (%s) failed, retried later: %s", reason, exc)
        if reason != "check":
            with self._lock:
                self._check_reason = self._check_reason or reason

    # ---- clock ---------------------------------------------------------------------------------------------

    def now_ms(self) -> int:
        """Redis TIME as last seen, carried forward on the monotonic clock; the wall clock only before that."""
        if self._redis_ms is None:
            return time.time_ns() // 1_000_000
        return self._redis_ms + int((time.monotonic() - self._redis_mono) * 1000)

    def seen(self, outcome: Reservation | Blocked) -> None:
        """Note Redis TIME, and what Redis said is left of each counter (the start of a later outage's share)."""
        self._redis_ms, self._redis_mono = int(outcome.now_ms), time.monotonic()
        keys = self.local.keys
        if isinstance(outcome, Reservation):
            for state in outcome.states:
                self._seen_left[keys.counter(outcome.plan, state.counter)] = (state.remaining, outcome.now_ms)
        elif outcome.counter is not None and not outcome.never:
            self._seen_left[keys.counter(outcome.plan, outcome.counter)] = (0, outcome.now_ms)

    # ---- the circuit ---------------------------------------------------------------------------------------

    @property
    def reachable(self) -> bool:
        return self._down_since is None

    def use_redis(self) -> bool:
        """True: send this call to Redis (healthy, or this call is the probe). At most one probe per interval."""
        with self._lock:
            if self._down_since is None:
                return True
            now = time.monotonic()
            if now >= self._next_probe:
                self._next_probe = now + self.probe_interval_s
                probe = True
            else:
                return False
        if self.target.embedded_path is not None:  # the embedded server died: the probe starts it again
            try:
                ensure_embedded(self.target.embedded_path)
            except StoreError as exc:
                log.debug("router_plugin: could not restart the embedded store: %s", exc)
        return probe

    def failed(self, error: StoreError) -> None:
        with self._lock:
            self._last_error = str(error)
            self._next_probe = time.monotonic() + self.probe_interval_s
            if self._down_since is not None:
                log.debug("router_plugin: quota store still unreachable: %s", error)
                return
            self._down_since = time.monotonic()
            self.outages += 1
        text = str(error).rstrip(". ")
        if self.mode == FAIL_OPEN:
            log.error(
                "router_plugin: %s. Serving from a per-process limiter holding 1/%d of each limit "
                "(on_store_error: fail_open, expected_workers: %d) until the store answers again; "
                "checking every %.0f s.", text, self.workers, self.workers, self.probe_interval_s,
            )
        else:
            log.error(
                "router_plugin: %s. Refusing every request (on_store_error: fail_closed) until the store "
                "answers again; checking every %.0f s.", text, self.probe_interval_s,
            )

    def recovered(self) -> Replay | None:
        """A call to Redis succeeded. If the circuit was open: close it and return what to replay."""
        if self._down_since is None:
            return None
        with self._lock:
            if self._down_since is None:
                return None
            down_for = time.monotonic() - self._down_since
            self._down_since = None
            replay = self._pending
            self._pending = Replay()
            replay.merge(self._snapshot())
            self._check_reason = self._check_reason or "reconnect"
        log.warning(
            "router_plugin: quota store %s answers again after %.1f s; back to the shared counters "
            "(replaying %d local counter group(s) and %d block(s))",
            self.target.describe(), down_for, len(replay.adjust), len(replay.marks),
        )
        return replay

    def answered(self, result: Any) -> Replay | None:
        """A call to Redis returned ``result``: note what it says; if Redis was down until now, what to replay."""
        if isinstance(result, (Reservation, Blocked)):
            self.seen(result)
        elif isinstance(result, list):  # reserve_first: every candidate blocked
            for outcome in result:
                if isinstance(outcome, Blocked):
                    self.seen(outcome)
        return self.recovered()

    def call_failed(self, action: str, exc: BaseException) -> None:
        """A call to Redis failed: open the circuit. fail_closed raises the ``StoreError``; fail_open returns (the
        caller serves from the local share)."""
        error = _as_store_error(self.target, action, exc)
        self.failed(error)
        if self.mode == FAIL_CLOSED:
            raise error from exc

    def replay_failed(self, replay: Replay, error: StoreError) -> None:
        with self._lock:
            self._pending.merge(replay)
        self.failed(error)

    def closed_error(self) -> StoreError:
        wait = max(0.0, self._next_probe - time.monotonic())
        return StoreError(
            f"quota store {self.target.describe()} is unreachable ({self._last_error or 'no answer'}); "
            f"refusing requests because router_plugin.on_store_error is fail_closed (next check in {wait:.1f} s)"
        )

    def status(self) -> GuardStatus:
        down = 0.0 if self._down_since is None else time.monotonic() - self._down_since
        return GuardStatus(self.mode, self.reachable, down, self._last_error, self.outages, self.local_grants,
                           self.local_refusals)

    # ---- the local limiter ---------------------------------------------------------------------------------

    def share(self, plan: DeploymentPlan) -> DeploymentPlan:
        """The plan with every capacity cut to this worker's share (same keys, labels that say so)."""
        shared = self._shares.get(plan)
        if shared is None:
            shared = dataclasses.replace(plan, counters=tuple(self.share_counter(c) for c in plan.counters))
            self._shares[plan] = shared
        return shared

    def share_counter(self, c: Counter) -> Counter:
        """One counter with its capacity cut to this worker's share (a label that says so)."""
        shared = self._shares.get(c)
        if shared is None:
            cap = max(1, c.limit.capacity // self.workers)
            label = (f"{c.label} [this worker's share, {cap} of {c.limit.capacity}, while the quota store "
                     f"{self.target.describe()} is unreachable]")
            shared = dataclasses.replace(c, limit=dataclasses.replace(c.limit, capacity=cap), label=label)
            self._shares[c] = shared
        return shared

    def _touch(self, plan: DeploymentPlan, counters: Iterable[Counter]) -> DeploymentPlan:
        shared = self.share(plan)
        for c in counters:
            key = self.local.keys.counter(shared, c)
            share = self.share_counter(c)
            if key not in self._touched:
                self._touched[key] = (plan, c, share)
            if key not in self._seeded:
                self._seeded.add(key)
                self._seed(key, c, share)
        return shared

    def _seed(self, key: str, counter: Counter, share: Counter) -> None:
        """First local use of a counter in this outage: hold only this worker's share of what Redis last said was
        left (if that was in the current window), and mark all of it as not ours to replay."""
        now = self.now_ms()
        seen = self._seen_left.get(key)
        limit, cap = counter.limit, share.limit.capacity
        if seen is not None:
            left, at = seen
            used = cap - left / self.workers
            if limit.kind == "fixed":
                used = cap - left // self.workers
                ok = at // limit.window_ms == now // limit.window_ms
            else:
                used -= (now - at) * cap / limit.window_ms
                ok = True
            if ok and used > 0:
                op = (share, ">", round(min(cap, used), 3), 0)
                self.local.run("adjust", [key], _codec.adjust_args([op]), now)
        units, window = self.local.usage(key, share, now)
        self._baselines[key] = _Baseline(units, now, window)

    def local_reserve(self, plan: DeploymentPlan, tokens: int, dry: bool, counters_only: bool,
                      ask: Ask | None = None) -> Reservation | Blocked:
        if self.mode == FAIL_CLOSED:
            raise self.closed_error()
        with self._lock:
            counters = plan.counters if ask is None else ask.counters
            shared = self._touch(plan, counters)
            if ask is None or not (ask.extra or ask.ceilings):
                outcome = self.local.reserve(shared, tokens, dry, counters_only)
                shared_counters = shared.counters
            else:  # the Ask on the share: its extra counters cut to the share, its ceilings in proportion
                shared_ask = Ask(shared, tokens, ceilings={
                    k: v * self.share_counter(c).limit.capacity / c.limit.capacity
                    for c in counters for k, v in ask.ceilings.items() if k == c.key},
                    extra=tuple(self.share_counter(c) for c in ask.extra))
                mode = _codec.COUNTERS_ONLY if counters_only else (_codec.DRY if dry else _codec.RESERVE)
                keys = _codec.candidate_keys(self.local.keys, shared_ask)
                reply = self.local._run_reserve(keys, [1, self.local.margin_ms,
                                                       *_codec.candidate_args(shared_ask, mode)])
                outcome = _codec.parse_one(shared_ask, reply)
                shared_counters = shared_ask.counters
            if isinstance(outcome, Reservation):
                if not dry:
                    self.local_grants += 1
                    for c in shared_counters:
                        if c.limit.kind == "fixed":
                            tally = (self.local.keys.counter(shared, c), outcome.now_ms // c.limit.window_ms)
                            units = 1 if c.limit.unit == "requests" else outcome.tokens
                            self.local_tally[tally] = self.local_tally.get(tally, 0) + units
                            if len(self.local_tally) > 10_000:  # observability only: keep the recent windows
                                del self.local_tally[next(iter(self.local_tally))]
                    ident = _ident(plan, outcome.now_ms, tokens)
                    self._owned[ident] = self._owned.get(ident, 0) + 1
                    while len(self._owned) > _MAX_TRACKED:
                        self._owned.popitem(last=False)
                return Reservation(plan, outcome.tokens, outcome.now_ms, outcome.states,
                                   extra=ask.extra if ask is not None else ())
            if not dry:
                self.local_refusals += 1
            return Blocked(plan, outcome.counter, outcome.until_ms, outcome.why, outcome.now_ms, outcome.ceiling)

    def local_reserve_first(self, asks: list[Ask]) -> Reservation | list[Blocked]:
        """``reserve_first`` on this worker's share (fail_open), candidate by candidate."""
        blocked: list[Blocked] = []
        for ask in asks:
            outcome = self.local_reserve(ask.plan, ask.tokens, ask.peek, False, ask)
            if isinstance(outcome, Reservation):
                if ask.peek:
                    continue
                return outcome
            blocked.append(outcome)
        return blocked

    def owns(self, reservation: Reservation) -> bool:
        """Whether this reservation's cost is in the local limiter and not yet replayed (then it settles here)."""
        with self._lock:
            ident = _ident(reservation.plan, reservation.now_ms, reservation.tokens)
            count = self._owned.get(ident)
            if not count:
                return False
            if count == 1:
                del self._owned[ident]
            else:
                self._owned[ident] = count - 1
            return True

    def local_adjust(self, plan: DeploymentPlan, ops: list, only_increases: bool = False) -> None:
        """Apply counter adjustments to the local limiter (on the share plan).

        ``only_increases``: the reservation was counted in Redis, not here — give nothing back locally (that would
        let this worker exceed its share), but do count extra use it reports.
        """
        if self.mode == FAIL_CLOSED and only_increases:
            raise self.closed_error()
        with self._lock:
            self._touch(plan, [op[0] for op in ops])
            local_ops = [(self.share_counter(c), op, value, window) for c, op, value, window in ops
                         if not (only_increases and op == "+" and value <= 0)]
            if local_ops:
                self.local.run("adjust", [self.local.keys.counter(plan, o[0]) for o in local_ops],
                               _codec.adjust_args(local_ops))

    def local_calibrate(self, plan: DeploymentPlan, facts: Iterable[Remaining]) -> None:
        if self.mode == FAIL_CLOSED:
            raise self.closed_error()
        with self._lock:
            shared = self._touch(plan, plan.counters)
            self.local.calibrate(shared, facts)

    def local_mark(self, redis_key: str, plan: DeploymentPlan, args: list, model: bool) -> tuple[int, int]:
        """Record a block / cooldown locally and queue it (with its absolute end) for Redis."""
        with self._lock:
            shared = self.share(plan)
            key = self.local.keys.model(shared) if model else redis_key
            until_ms, strikes = self.local.mark(key, args)
            why, max_ms = args[4], max(int(args[3]), 60_000)
            self._queued_marks[redis_key] = _codec.mark_args(until_ms, 0, False, max_ms, why)
            self._queued_marks.move_to_end(redis_key)
            while len(self._queued_marks) > _MAX_TRACKED:
                self._queued_marks.popitem(last=False)
        if self.mode == FAIL_CLOSED:
            raise self.closed_error()
        return until_ms, strikes

    # ---- replay --------------------------------------------------------------------------------------------

    def _snapshot(self) -> Replay:
        """Local use Redis has not seen yet, per counter: what is in its current window or bucket now, minus
        what an earlier replay already sent (that part drains locally at the same rate)."""
        replay = Replay()
        now = self.now_ms()
        for key, (plan, counter, shared_counter) in self._touched.items():
            units, window = self.local.usage(key, shared_counter, now)
            base = self._baselines.get(key)
            sent = 0.0
            if base is not None:
                if counter.limit.kind == "fixed":
                    sent = base.units if base.window == window else 0.0
                else:
                    limit = shared_counter.limit
                    sent = max(0.0, base.units - (now - base.at_ms) * limit.capacity / limit.window_ms)
            delta = round(units - sent, 3)
            self._baselines[key] = _Baseline(units, now, window)
            if delta > 0:
                replay.adjust.setdefault(plan.slot, (plan, []))[1].append((counter, "+", delta, window))
        replay.marks = list(self._queued_marks.items())
        self._queued_marks.clear()
        self._owned.clear()  # their cost is in Redis from now on: settle them there
        self._seeded.clear()  # the next outage starts again from what Redis says then
        return replay


class LoopLag:
    """How late one event loop runs its timers: a tick every 100 ms notes how late it fired (a few µs of work).

    A Redis timeout measured on a loop that was itself far behind (a burst of LiteLLM requests on a busy machine:
    ten connections opened at once while other requests hold the CPU) says nothing about Redis.
    ``max_since(t)`` is the worst lateness seen since loop time ``t``.
    """

    TICK_S = 0.1

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.recent: deque = deque(maxlen=100)  # (loop time the tick was due, how late it ran)
        self._due = loop.time() + self.TICK_S
        loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        self.recent.append((self._due, now - self._due))
        self._due = now + self.TICK_S
        self.loop.call_at(self._due, self._tick)

    def max_since(self, since: float) -> float:
        worst = max((late for due, late in self.recent if due >= since), default=0.0)
        return max(worst, self.loop.time() - self._due)  # a tick that is overdue right now


_lag_monitors: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLag]" = weakref.WeakKeyDictionary()


def _loop_lag() -> LoopLag:
    loop = asyncio.get_running_loop()
    monitor = _lag_monitors.get(loop)
    if monitor is None:
        monitor = _lag_monitors[loop] = LoopLag(loop)
    return monitor


_TIMEOUTS: tuple = (asyncio.TimeoutError, TimeoutError, redis.TimeoutError)
_LAG_RETRIES = 5  # a call that timed out while the loop itself ran late is tried again, at most this many times


def _timed_out(exc: BaseException) -> bool:
    return isinstance(exc, _TIMEOUTS) or isinstance(exc.__cause__, _TIMEOUTS)


def _pool_busy(exc: BaseException) -> bool:
    """No free connection in the pool within the wait (BlockingConnectionPool) or past its size (ConnectionPool)."""
    for e in (exc, exc.__cause__):
        if isinstance(e, getattr(redis.exceptions, "MaxConnectionsError", ())) or (
            isinstance(e, redis.ConnectionError) and "No connection available" in str(e)
        ):
            return True
    return False


def _ident(plan: DeploymentPlan, now_ms: int, tokens: int) -> tuple:
    return (plan.deployment_id, plan.slot, int(now_ms), int(tokens))


def _as_store_error(target: StoreTarget, action: str, exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return StoreError(f"quota store {target.describe()} did not answer in time to {action}")
    return StoreError(f"quota store {target.describe()} failed to {action}: {type(exc).__name__}: {exc}")


_ASYNC_FAILURES = (StoreError, asyncio.TimeoutError, *STORE_FAILURES)


def _raw_ensure_marker(sync_store: Any) -> bool:  # the unguarded marker call of a sync store
    return bool(sync_store.client.set(marker_key(sync_store.keys.prefix), _marker_value(), nx=True))


class ResilientQuotaStore(QuotaStore):
    """``QuotaStore`` with the fault policy: same methods, same results while Redis is healthy."""

    def __init__(self, target: StoreTarget, prefix: str = "rp:", client: Any = None, arrival_margin_s: float = 2.0,
                 guard: StoreGuard | None = None):
        super().__init__(target, prefix, client=client, arrival_margin_s=arrival_margin_s)
        self.guard = guard or StoreGuard(target, prefix, arrival_margin_s=arrival_margin_s)
        self._replays: set[asyncio.Task] = set()
        self.lag_retries = 0  # calls tried again because the event loop, not Redis, was late
        self.pool_waits = 0  # calls that waited again for a free connection (a burst, Redis healthy)

    async def _guarded(self, action: str, call: Callable[[], Awaitable[Any]], fallback: Callable[[], Any],
                       use_redis: bool | None = None) -> Any:
        """``call()`` under the fault policy; ``use_redis``: the guard's answer when the caller already asked it
        (``use_redis()`` hands out the one probe per interval: asking twice would lose it)."""
        guard = self.guard
        if guard.use_redis() if use_redis is None else use_redis:
            try:
                # The client's own timeouts bound each wait on Redis (connect, every reply) to redis_timeout_s and
                # it never sleeps to retry: that is what a dead or hung Redis costs one request. No deadline over
                # the whole call on top: on a busy event loop (a burst through the LiteLLM proxy) a healthy call can
                # take seconds of wall time in several short waits, and calling that an outage over-admitted.
                result = await self._call_through_lag(call)
            except _ASYNC_FAILURES as exc:
                guard.call_failed(action, exc)
            else:
                replay = guard.answered(result)
                if replay:
                    self._start_replay(replay)
                reason = guard.due_check()
                if reason:
                    self._start_check(reason)
                return result
        return fallback()

    def _start_check(self, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self._check(reason))
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)

    async def _check(self, reason: str) -> None:
        """The server check (after an outage or an unreachable open) and the marker, off the request path."""
        try:
            async with asyncio.timeout(self.target.timeout_s * 3):
                if reason != "check":
                    await acheck_server(self.target, self.client)
                if await self.client.set(marker_key(self.keys.prefix), _marker_value(), nx=True):
                    self.guard.found_empty(reason)
        except (StoreError, asyncio.TimeoutError, *STORE_FAILURES) as exc:
            self.guard.check_failed(reason, exc)

    def on_empty(self, callback: Callable[[str], Any]) -> None:
        """See ``StoreGuard.on_empty`` (shared with the sync store of the same router)."""
        self.guard.on_empty(callback)

    async def _call_through_lag(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()``; a timeout while this event loop itself ran late (by half the timeout or more) is the loop's,
        not Redis's: try again (a few times at most) instead of declaring the store down."""
        lag = _loop_lag()
        attempt = 0
        while True:
            started = lag.loop.time()
            try:
                return await call()
            except _ASYNC_FAILURES as exc:
                if _pool_busy(exc) and self.guard.reachable:
                    # Every connection of this loop's pool is in use by other requests and none has found Redis
                    # down: a burst, not an outage. Wait again (the calls ahead of this one finish or time out).
                    self.pool_waits += 1
                    continue
                if not _timed_out(exc) or attempt == _LAG_RETRIES:
                    raise
                attempt += 1
                late = lag.max_since(started)
                if late < self.target.timeout_s / 2:
                    raise
                self.lag_retries += 1
                log.debug("router_plugin: a quota store call timed out while the event loop ran %.2f s late; "
                          "trying again: %s", late, exc)

    def _start_replay(self, replay: Replay) -> None:
        task = asyncio.get_running_loop().create_task(self._replay(replay))
        self._replays.add(task)  # keep a reference until it is done
        task.add_done_callback(self._replays.discard)

    async def _replay(self, replay: Replay) -> None:
        """Send the local usage and queued marks to Redis (off the request path, bounded like any call)."""
        try:
            async with asyncio.timeout(self.target.timeout_s * (1 + len(replay.adjust))):
                await self._apply_replay(replay)
        except _ASYNC_FAILURES as exc:
            self.guard.replay_failed(replay, _as_store_error(self.target, "replay local counters", exc))
        except asyncio.CancelledError:
            self.guard.replay_failed(replay, StoreError("replay cancelled (event loop closing)"))
            raise

    async def _apply_replay(self, replay: Replay) -> None:
        for plan, ops in replay.adjust.values():
            await QuotaStore._adjust(self, plan, ops)
        for key, args in replay.marks:
            await QuotaStore._mark(self, key, args)

    async def wait_replayed(self) -> None:
        """Tests and shutdown: wait until a replay in flight has been applied."""
        while self._replays:
            await asyncio.gather(*list(self._replays), return_exceptions=True)

    # ---- the store API -------------------------------------------------------------------------------------

    async def reserve(
        self, plan: DeploymentPlan, tokens: int, dry: bool = False, counters_only: bool = False
    ) -> Reservation | Blocked:
        return await self._guarded(
            "reserve", lambda: QuotaStore.reserve(self, plan, tokens, dry, counters_only),
            lambda: self.guard.local_reserve(plan, tokens, dry, counters_only),
        )

    async def reserve_first(self, asks: Iterable[Ask]) -> Reservation | list[Blocked]:
        asks = list(asks)
        if not asks:
            return []
        return await self._guarded(
            "reserve", lambda: QuotaStore.reserve_first(self, asks), lambda: self.guard.local_reserve_first(asks),
        )

    def start_reserve_first(self, asks: Iterable[Ask]) -> Awaitable[Reservation | list[Blocked]]:
        """``reserve_first`` sent now when Redis is in use and the lane open (see ``QuotaStore``), under the same
        fault policy when awaited."""
        asks = list(asks)
        if not asks:
            return self.reserve_first(asks)
        use_redis = self.guard.use_redis()  # asked once: a probe it hands out is this call's
        first = [QuotaStore.start_reserve_first(self, asks)] if use_redis else []
        return self._guarded(  # the call already sent first; a retry (the loop ran late) sends anew
            "reserve", lambda: first.pop() if first else QuotaStore.reserve_first(self, asks),
            lambda: self.guard.local_reserve_first(asks), use_redis=use_redis,
        )

    async def settle(self, reservation: Reservation, actual_tokens: int, seen: Iterable[Remaining] = ()) -> None:
        seen = list(seen)
        if not seen:
            await self._adjust_for(reservation, _codec.settle_ops(reservation, actual_tokens))
            return
        plan, settle_only = reservation.plan, _codec.settle_ops(reservation, actual_tokens)
        if self.guard.owns(reservation):
            self.guard.local_adjust(plan, settle_only)
            self.guard.local_calibrate(plan, seen)
            return

        def locally() -> None:  # the share limiter counts in its own (share) units: each part converts itself
            if settle_only:
                self.guard.local_adjust(plan, settle_only, only_increases=True)
            self.guard.local_calibrate(plan, seen)

        ops = _codec.settle_ops(reservation, actual_tokens, seen)  # one round trip for both
        if ops:
            await self._guarded("adjust counters", lambda: QuotaStore._adjust(self, plan, ops), locally)

    def settle_later(self, reservation: Reservation, actual_tokens: int, seen: Iterable[Remaining] = ()) -> None:
        """``settle`` off the request's path (batch.py); while Redis is unreachable the flush applies it where
        ``settle`` would have (the local limiter, replayed later)."""
        seen = list(seen)
        plan, settle_only = reservation.plan, _codec.settle_ops(reservation, actual_tokens)
        if self.guard.owns(reservation):  # made locally during an outage: its cost is here, settle it here
            if settle_only:
                self.guard.local_adjust(plan, settle_only)
            if seen:
                self.guard.local_calibrate(plan, seen)
            return

        def locally() -> None:
            if settle_only:
                self.guard.local_adjust(plan, settle_only, only_increases=True)
            if seen:
                self.guard.local_calibrate(plan, seen)

        self._defer(plan, settle_only + _codec.calibrate_ops(plan, seen) if seen else settle_only, locally)

    def calibrate_later(self, plan: DeploymentPlan, facts: Iterable[Remaining]) -> None:
        facts = list(facts)
        self._defer(plan, _codec.calibrate_ops(plan, facts), lambda: self.guard.local_calibrate(plan, facts))

    async def _send_group(self, group: list) -> None:
        """A flush under the fault policy: fail_open applies what Redis cannot take to the local limiter (it is
        replayed when Redis answers again); fail_closed raises, and the flush keeps them queued."""
        def locally() -> None:
            for item in group:
                if item.locally is not None:
                    item.locally()

        await self._guarded("adjust counters", lambda: QuotaStore._send_group(self, group), locally)

    async def refund(self, reservation: Reservation, requests: bool = False) -> None:
        await self._adjust_for(reservation, _codec.refund_ops(reservation, requests))

    async def _adjust_for(self, reservation: Reservation, ops: list) -> None:
        if not ops:
            return
        if self.guard.owns(reservation):  # made locally during an outage and not replayed yet: its cost is here
            self.guard.local_adjust(reservation.plan, ops)
            return
        await self._guarded(
            "adjust counters", lambda: QuotaStore._adjust(self, reservation.plan, ops),
            lambda: self.guard.local_adjust(reservation.plan, ops, only_increases=True),
        )

    async def calibrate(self, plan: DeploymentPlan, facts: Iterable[Remaining]) -> None:
        facts = list(facts)
        if not _codec.calibrate_ops(plan, facts):
            return  # nothing to write: no call to Redis (and no false "answers again")
        await self._guarded(
            "adjust counters", lambda: QuotaStore.calibrate(self, plan, facts),
            lambda: self.guard.local_calibrate(plan, facts),
        )

    async def block(self, plan: DeploymentPlan, counter: Counter, until_ms: int, why: str, for_ms: int = 0) -> int:
        key, args = self.keys.counter(plan, counter), _codec.block_args(until_ms, why, for_ms)
        result = await self._guarded(
            "record a block", lambda: QuotaStore._mark(self, key, args),
            lambda: self.guard.local_mark(key, plan, args, model=False),
        )
        return result[0]

    async def cool(
        self, plan: DeploymentPlan, why: str, base_s: float, max_s: float, escalate: bool = True, until_ms: int = 0
    ) -> int:
        key = self.keys.model(plan)
        args = _codec.mark_args(until_ms, int(base_s * 1000), escalate, int(max_s * 1000), why)
        result = await self._guarded(
            "record a block", lambda: QuotaStore._mark(self, key, args),
            lambda: self.guard.local_mark(key, plan, args, model=True),
        )
        return result[1]


class ResilientSyncQuotaStore(SyncQuotaStore):
    """``SyncQuotaStore`` with the same fault policy and the same guard as the async store of its router."""

    def __init__(self, target: StoreTarget, prefix: str = "rp:", client: Any = None, arrival_margin_s: float = 2.0,
                 guard: StoreGuard | None = None):
        super().__init__(target, prefix, client=client, arrival_margin_s=arrival_margin_s)
        self.guard = guard or StoreGuard(target, prefix, arrival_margin_s=arrival_margin_s)

    def _guarded(self, action: str, call: Callable[[], Any], fallback: Callable[[], Any]) -> Any:
        guard = self.guard
        if guard.use_redis():
            try:
                result = call()  # bounded by the client's socket timeouts (= redis_timeout_s), no retry sleeps
            except (StoreError, *STORE_FAILURES) as exc:
                guard.call_failed(action, exc)
            else:
                replay = guard.answered(result)
                if replay:
                    try:
                        for plan, ops in replay.adjust.values():
                            SyncQuotaStore._adjust(self, plan, ops)
                        for key, args in replay.marks:
                            SyncQuotaStore._mark(self, key, args)
                    except (StoreError, *STORE_FAILURES) as exc:
                        guard.replay_failed(replay, _as_store_error(self.target, "replay local counters", exc))
                reason = guard.due_check()
                if reason:
                    try:
                        if reason != "check":
                            check_server(self.target, self.client)
                        if SyncQuotaStore.ensure_marker(self):
                            guard.found_empty(reason)
                    except (StoreError, *STORE_FAILURES) as exc:
                        guard.check_failed(reason, exc)
                return result
        return fallback()

    def on_empty(self, callback: Callable[[str], Any]) -> None:
        """See ``StoreGuard.on_empty`` (shared with the async store of the same router)."""
        self.guard.on_empty(callback)

    def reserve(
        self, plan: DeploymentPlan, tokens: int, dry: bool = False, counters_only: bool = False
    ) -> Reservation | Blocked:
        return self._guarded(
            "reserve", lambda: SyncQuotaStore.reserve(self, plan, tokens, dry, counters_only),
            lambda: self.guard.local_reserve(plan, tokens, dry, counters_only),
        )

    def reserve_first(self, asks: Iterable[Ask]) -> Reservation | list[Blocked]:
        asks = list(asks)
        if not asks:
            return []
        return self._guarded(
            "reserve", lambda: SyncQuotaStore.reserve_first(self, asks), lambda: self.guard.local_reserve_first(asks),
        )

    def settle(self, reservation: Reservation, actual_tokens: int, seen: Iterable[Remaining] = ()) -> None:
        self._adjust_for(reservation, _codec.settle_ops(reservation, actual_tokens))
        self.calibrate(reservation.plan, seen)

    def refund(self, reservation: Reservation, requests: bool = False) -> None:
        self._adjust_for(reservation, _codec.refund_ops(reservation, requests))

    def _adjust_for(self, reservation: Reservation, ops: list) -> None:
        if not ops:
            return
        if self.guard.owns(reservation):
            self.guard.local_adjust(reservation.plan, ops)
            return
        self._guarded(
            "adjust counters", lambda: SyncQuotaStore._adjust(self, reservation.plan, ops),
            lambda: self.guard.local_adjust(reservation.plan, ops, only_increases=True),
        )

    def calibrate(self, plan: DeploymentPlan, facts: Iterable[Remaining]) -> None:
        facts = list(facts)
        if not _codec.calibrate_ops(plan, facts):
            return
        self._guarded(
            "adjust counters", lambda: SyncQuotaStore.calibrate(self, plan, facts),
            lambda: self.guard.local_calibrate(plan, facts),
        )

    def block(self, plan: DeploymentPlan, counter: Counter, until_ms: int, why: str, for_ms: int = 0) -> int:
        key, args = self.keys.counter(plan, counter), _codec.block_args(until_ms, why, for_ms)
        return self._guarded(
            "record a block", lambda: SyncQuotaStore._mark(self, key, args),
            lambda: self.guard.local_mark(key, plan, args, model=False),
        )[0]

    def cool(
        self, plan: DeploymentPlan, why: str, base_s: float, max_s: float, escalate: bool = True, until_ms: int = 0
    ) -> int:
        key = self.keys.model(plan)
        args = _codec.mark_args(until_ms, int(base_s * 1000), escalate, int(max_s * 1000), why)
        return self._guarded(
            "record a block", lambda: SyncQuotaStore._mark(self, key, args),
            lambda: self.guard.local_mark(key, plan, args, model=True),
        )[1]


def open_resilient(target: StoreTarget, prefix: str = "rp:", *, arrival_margin_s: float = 2.0,
                   on_store_error: str = FAIL_OPEN, expected_workers: int = 4,
                   probe_interval_s: float = PROBE_INTERVAL_S) -> tuple[ResilientQuotaStore, ResilientSyncQuotaStore]:
    guard = StoreGuard(target, prefix, arrival_margin_s=arrival_margin_s, on_store_error=on_store_error,
                       expected_workers=expected_workers, probe_interval_s=probe_interval_s)
    return (ResilientQuotaStore(target, prefix, arrival_margin_s=arrival_margin_s, guard=guard),
            ResilientSyncQuotaStore(target, prefix, arrival_margin_s=arrival_margin_s, guard=guard))
