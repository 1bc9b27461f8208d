"""An in-process twin of the quota scripts: the same semantics as ``reserve.lua`` / ``adjust.lua`` / ``mark.lua``,
in Python, over a dict. No Redis, no dependency.

It is the per-process limiter that ``on_store_error: fail_open`` falls back to while Redis is unreachable (see
``resilient.py``): the resilient store hands it plans whose capacities are this worker's share. Each ``_script_*``
function is a line-by-line transcription of its ``.lua`` file, taking the same KEYS / ARGV and giving the same
reply; ``tests/test_races.py`` checks that they agree with the Lua scripts on random operation sequences.

Time is ``clock_ms()`` (the resilient store passes Redis TIME carried forward on the monotonic clock, so windows
stay aligned with the shared ones during an outage); keys expire like Redis keys (PEXPIREAT), lazily.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..limits import Counter, DeploymentPlan
from . import _codec
from ._codec import Blocked, KeySpace, Reservation
from ._ops import SyncOperations

Reply = list


#: reserve.lua's EPS: refill levels that cancel exactly in arithmetic may not in floats (29.000000000000007).
_EPS = 1e-6


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _num(value: Any) -> float | int | None:
    """Lua ``tonumber``: numbers pass, numeric strings convert, anything else is nil."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reply(items: Iterable[Any]) -> Reply:
    """A Lua table as Redis returns it: numbers truncated to integers, strings kept."""
    return [int(x) if isinstance(x, (int, float)) else x for x in items]


class _Hashes:
    """Redis hashes with PEXPIREAT, expired lazily against the caller's clock (``now > at`` = gone, as Redis)."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.expire_at: dict[str, int] = {}
        self._writes = 0

    def _alive(self, key: str, now: int) -> bool:
        at = self.expire_at.get(key)
        if at is not None and now > at:
            self.data.pop(key, None)
            self.expire_at.pop(key, None)
        return key in self.data

    def hmget(self, key: str, now: int, *fields: str) -> list:
        if not self._alive(key, now):
            return [None] * len(fields)
        h = self.data[key]
        return [h.get(f) for f in fields]

    def hset(self, key: str, now: int, **values: Any) -> None:
        self._alive(key, now)
        self.data.setdefault(key, {}).update(values)
        self._writes += 1
        if self._writes % 1024 == 0:
            self.sweep(now)

    def pttl(self, key: str, now: int) -> int:
        if not self._alive(key, now):
            return -2
        at = self.expire_at.get(key)
        return -1 if at is None else at - now

    def pexpireat(self, key: str, at: float) -> None:
        if key in self.data:
            self.expire_at[key] = int(at)

    def sweep(self, now: int) -> None:
        for key in [k for k, at in self.expire_at.items() if now > at]:
            self.data.pop(key, None)
            self.expire_at.pop(key, None)


# ---- the scripts, transcribed (keep in step with the .lua files) ----------------------------------------------


def script_reserve(db: _Hashes, now: int, keys: Sequence[str], argv: Sequence[Any]) -> Reply:
    """reserve.lua. ``argv`` is 0-based here: ARGV[k] is ``argv[k - 1]``; ``keys`` likewise (KEYS[k] = keys[k - 1])."""
    ARGV = [None, *argv]  # noqa: N806  (1-based, as in the script)
    KEYS = [None, *keys]  # noqa: N806
    m = int(_num(ARGV[1]))
    margin = _num(ARGV[2])

    def attempt(k: int, a: int, mode: str) -> tuple:
        strikes = 0
        if mode != "2":
            cool_until_raw, cool_why, strikes_raw = db.hmget(KEYS[k], now, "until", "why", "strikes")
            cool_until = _num(cool_until_raw)
            if cool_until is not None and cool_until > now:
                return [0, cool_until, cool_why if cool_why is not None else "cooling down"], 0, [], {}
            strikes = _num(strikes_raw) or 0
        n = int(_num(ARGV[a]))
        writes: dict[int, tuple] = {}
        states: list = []
        blocked_i, blocked_until, blocked_why = None, 0, ""
        for i in range(1, n + 1):
            base = a + 1 + (i - 1) * 5
            kind, cap, win, cost = _str(ARGV[base]), _num(ARGV[base + 1]), _num(ARGV[base + 2]), _num(ARGV[base + 3])
            ceil = _num(ARGV[base + 4])
            over = "ceiling" if ceil < cap else "full"
            h = db.hmget(KEYS[k + i], now, "at", "used", "spill", "until", "why")
            at = _num(h[0])
            used = _num(h[1]) if _num(h[1]) is not None else 0
            spill = _num(h[2]) if _num(h[2]) is not None else 0
            held = _num(h[3])
            until_ms, why = None, None
            if kind == "f":
                w = math.floor(now / win)
                if at == w - 1:
                    used, spill = spill, 0
                elif at != w:
                    used, spill = 0, 0
                reset = (w + 1) * win
                if used + cost > ceil:
                    until_ms, why = reset, over
                if reset - now < margin:
                    spill = spill + cost
                writes[i] = (w, used + cost, spill, reset + win if spill > 0 else reset)  # spill is read next window
                left = cap - used - cost
            else:
                # the arrival margin on a refill bucket: see the comment in reserve.lua
                level, credit = 0, 0
                if at is not None:
                    elapsed = now - at
                    level = used - elapsed * cap / win
                    if level > 0:
                        credit = now - spill
                    else:
                        empty_at = at + used * win / cap
                        credit = min(margin - (now - empty_at), empty_at - spill)
                        level = 0
                    if credit > margin:
                        credit = margin
                    if credit < 0:
                        credit = 0
                checked = level + credit * cap / win
                if cost > cap:
                    until_ms, why = -1, "too large"
                elif checked + cost > ceil + _EPS:
                    until_ms, why = now + margin + math.ceil((level + cost - ceil) * win / cap), over
                    if until_ms <= now:
                        until_ms = now + 1
                reset = now + math.ceil((level + cost) * win / cap)
                writes[i] = (now, level + cost, now - credit, now + win + margin)
                left = cap - checked - cost
            if held is not None and held > now and until_ms != -1 and (until_ms is None or held > until_ms):
                until_ms, why = held, (h[4] if h[4] is not None else "exhausted")
            if until_ms is not None:
                if until_ms == -1:
                    return [i, -1, "request larger than the whole limit"], 0, [], {}
                if until_ms > blocked_until:
                    blocked_i, blocked_until, blocked_why = i, until_ms, why
            if left < 0:
                left = 0
            states.append(math.floor(left + _EPS))
            states.append(reset)
        if blocked_i is not None:
            return [blocked_i, blocked_until, blocked_why], 0, [], {}
        return None, strikes, states, writes

    none: list = [0, now]
    k, a = 1, 3
    for c in range(1, m + 1):
        mode, n = _str(ARGV[a]), int(_num(ARGV[a + 1]))
        blocked, strikes, states, writes = attempt(k, a + 1, mode)
        if blocked is None and mode == "3":
            blocked = [-1, 0, ""]
        if blocked is None:
            if mode == "0":
                for i in range(1, n + 1):
                    key, wr = KEYS[k + i], writes[i]
                    db.hset(key, now, at=wr[0], used=wr[1], spill=wr[2])
                    ttl = db.pttl(key, now)
                    keep_until = wr[3] + 1000
                    if ttl < 0 or now + ttl < keep_until:
                        db.pexpireat(key, keep_until)
            return _reply([1, now, c, strikes, *states])
        none.extend(blocked)
        k = k + 1 + n
        a = a + 2 + 5 * n
    return _reply(none)


def script_adjust(db: _Hashes, now: int, keys: Sequence[str], argv: Sequence[Any]) -> Reply:
    """adjust.lua."""
    ARGV = [None, *argv]  # noqa: N806
    n = int(_num(ARGV[1]))
    for i in range(1, n + 1):
        base = 2 + (i - 1) * 6
        kind, cap, win = _str(ARGV[base]), _num(ARGV[base + 1]), _num(ARGV[base + 2])
        op, value, wanted = _str(ARGV[base + 3]), _num(ARGV[base + 4]), _num(ARGV[base + 5])
        key = keys[i - 1]
        h = db.hmget(key, now, "at", "used", "spill")
        at = _num(h[0])
        used = _num(h[1]) if _num(h[1]) is not None else 0
        spill = _num(h[2]) if _num(h[2]) is not None else 0
        new_used = None
        if kind == "f":
            w = math.floor(now / win)
            if at == w - 1:
                used, spill = spill, 0
            elif at != w:
                used, spill = 0, 0
            if op == "+":
                if wanted == w:
                    new_used = used + value
            elif value > used:
                new_used = value
            new_at, keep_until = w, (w + 1) * win + 1000
        else:
            if at is not None:
                used = used - (now - at) * cap / win
                if used < 0:
                    used = 0
            if op == "+":
                new_used = used + value
            elif value > used:
                new_used = value
            new_at, keep_until = now, now + win + 1000
        if new_used is not None:
            if new_used < 0:
                new_used = 0
            db.hset(key, now, at=new_at, used=new_used, spill=spill)
            ttl = db.pttl(key, now)
            if ttl < 0 or now + ttl < keep_until:
                db.pexpireat(key, keep_until)
    return _reply([now])


def script_mark(db: _Hashes, now: int, keys: Sequence[str], argv: Sequence[Any]) -> Reply:
    """mark.lua."""
    ARGV = [None, *argv]  # noqa: N806
    old_until_raw, strikes_raw = db.hmget(keys[0], now, "until", "strikes")
    old_until = _num(old_until_raw) if _num(old_until_raw) is not None else 0
    strikes = _num(strikes_raw) if _num(strikes_raw) is not None else 0
    until_ms = _num(ARGV[1])
    if until_ms is None or until_ms <= 0:
        dur = _num(ARGV[2])
        if _str(ARGV[3]) == "1":
            dur = dur * (2 ** strikes)
            if dur > _num(ARGV[4]):
                dur = _num(ARGV[4])
        until_ms = now + dur
    strikes = strikes + 1
    if old_until > until_ms:
        until_ms = old_until
    else:
        db.hset(keys[0], now, until=until_ms, why=_str(ARGV[5]))
    db.hset(keys[0], now, strikes=strikes)
    keep_until = until_ms + max(_num(ARGV[4]), 60000)
    ttl = db.pttl(keys[0], now)
    if ttl < 0 or now + ttl < keep_until:
        db.pexpireat(keys[0], keep_until)
    return _reply([until_ms, strikes])


def script_adjust_reserve(db: _Hashes, now: int, keys: Sequence[str], argv: Sequence[Any]) -> Reply:
    """_codec.SCRIPTS["adjust_reserve"]: adjust.lua, then reserve.lua, in one atomic call."""
    nk, na = int(_num(argv[0])), int(_num(argv[1]))
    script_adjust(db, now, keys[:nk], argv[2:2 + na])
    return script_reserve(db, now, keys[nk:], argv[2 + na:])


SCRIPTS: dict[str, Callable[[_Hashes, int, Sequence[str], Sequence[Any]], Reply]] = {
    "adjust_reserve": script_adjust_reserve,
    "reserve": script_reserve,
    "adjust": script_adjust,
    "mark": script_mark,
}


class LocalQuotaStore(SyncOperations):
    """The quota store's operations over an in-process dict: the same API as ``SyncQuotaStore``. Thread-safe."""

    def __init__(self, prefix: str = "rp:", arrival_margin_s: float = 2.0,
                 clock_ms: Callable[[], int] | None = None):
        self.keys = KeySpace(prefix)
        self.margin_ms = int(arrival_margin_s * 1000)
        self.clock_ms = clock_ms or _wall_clock_ms
        self.db = _Hashes()
        self._lock = threading.RLock()

    def run(self, name: str, keys: Sequence[str], args: Sequence[Any], now_ms: int | None = None) -> Reply:
        """Run one script twin atomically: what ``EVALSHA`` does on Redis."""
        with self._lock:
            now = int(self.clock_ms()) if now_ms is None else int(now_ms)
            return SCRIPTS[name](self.db, now, list(keys), list(args))

    def _run_reserve(self, keys: list, args: list) -> Reply:
        return self.run("reserve", keys, args)

    def _mark(self, key: str, args: list) -> tuple[int, int]:
        reply = self.run("mark", [key], args)
        return int(reply[0]), int(reply[1])

    mark = _mark  # resilient.py replays its queued marks through it

    def _adjust(self, plan: DeploymentPlan, ops: list) -> None:
        if ops:
            self.run("adjust", [self.keys.counter(plan, op[0]) for op in ops], _codec.adjust_args(ops))

    def usage(self, key: str, counter: Counter, now_ms: int | None = None) -> tuple[float, int]:
        """What a counter holds now: (units, window index) — a fixed window's count in the current window,
        a refill bucket's level after drain (window index 0)."""
        with self._lock:
            now = int(self.clock_ms()) if now_ms is None else int(now_ms)
            at_raw, used_raw = self.db.hmget(key, now, "at", "used")
            at, used = _num(at_raw), _num(used_raw) or 0
            limit = counter.limit
            if limit.kind == "fixed":
                w = now // limit.window_ms
                return (used if at == w else 0), w
            if at is None:
                return 0, 0
            return max(0.0, used - (now - at) * limit.capacity / limit.window_ms), 0

    def clear(self) -> None:
        with self._lock:
            self.db = _Hashes()
