"""All mutable simulator state — switches, limiter buckets, counters — behind one lock.

Every method takes the lock, so the aiohttp handlers (one event loop) and a test or benchmark thread can call
in at the same time. Each check-and-reserve is one locked call, so concurrent requests can never overshoot a
limit. Time comes from the injectable ``clock`` (default :func:`time.time`).

State is per API key: OpenRouter keys an *account* (one free-model pool, providers.md §1.1), Groq keys an
*organisation* (per-model limits, §2.1). Keys are only ever kept as ``key_hash`` (sha256 prefix).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import config as cfg
from .catalog import GROQ_MODELS
from .clock import Clock
from .limits import AccountPool, GroqBlock, GroqCaps, GroqLimits, PoolBlock
from .stats import Stats

__all__ = ["SimState", "AccountSettings", "ModelSwitches", "GroqSnapshot", "key_hash",
           "DEFAULT_DAILY_LIMIT", "FUNDED_DAILY_LIMIT", "DEFAULT_MINUTE_LIMIT"]

#: providers.md §1.1: 20 RPM; 50 RPD below 10 purchased credits, 1000 RPD at or above.
DEFAULT_MINUTE_LIMIT = 20
DEFAULT_DAILY_LIMIT = 50
FUNDED_DAILY_LIMIT = 1000


def key_hash(key: str) -> str:
    """The only form in which an API key is stored, logged or shown: a 12-hex-digit sha256 prefix."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class AccountSettings:
    """An OpenRouter account's free-tier settings. ``funded`` = has bought >= 10 credits (is_free_tier false)."""

    daily_limit: int
    minute_limit: int
    funded: bool
    balance_negative: bool


@dataclass(frozen=True)
class ModelSwitches:
    gone: bool = False
    busy: bool = False
    status: int | None = None
    error_200: int | None = None  # the error code to put in the 200 body, None = off
    stream_fault: str | None = None
    stall_s: float = 30.0
    latency_s: float = 0.0
    reject_prefill: bool = False  # 400 when the last message is the assistant's (no continuation support)


@dataclass(frozen=True)
class GroqSnapshot:
    """What Groq's ``x-ratelimit-*`` headers report (providers.md §2.2): ``requests`` = RPD, ``tokens`` = TPM."""

    limit_requests: int
    remaining_requests: int
    reset_requests_s: float
    limit_tokens: int
    remaining_tokens: int
    reset_tokens_s: float


class SimState:
    """Everything the simulator knows; see the module docstring. ``config`` is an initial ``/_sim/config`` patch."""

    def __init__(self, clock: Clock | None = None, config: dict | None = None, *, max_log: int = 10_000) -> None:
        self.clock: Clock = clock or time.time
        self.lock = threading.RLock()
        self._max_log = max_log
        self._ids = itertools.count(1)
        self.reset()
        if config:
            self.configure(config)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def now(self) -> float:
        return float(self.clock())

    def next_id(self) -> int:
        with self.lock:
            return next(self._ids)

    def reset(self) -> None:
        """All counters, switches and stats back to defaults (the clock is kept)."""
        with self.lock:
            self._config: dict[str, Any] = {}
            self._pools: dict[str, AccountPool] = {}
            self._groq: dict[tuple[str, str], GroqLimits] = {}
            self._stats = Stats(self._max_log)

    def configure(self, patch: dict) -> dict:
        """Merge a switches patch (schema in :mod:`.config`); returns the resulting switches (keys hashed).

        ``openrouter.accounts.<key>.used_today`` is an action, not a switch: it sets that account's count for
        the current UTC day. ``status_count`` is stored and counts down as the status is served.
        """
        cfg.validate_patch(patch)
        patch = dict(patch)
        used_today: dict[str, int] = {}
        accounts = (patch.get("openrouter") or {}).get("accounts")
        if accounts:
            hashed: dict[str, Any] = {}
            for key, acc in accounts.items():
                h = key if key == "*" else key_hash(key)
                if isinstance(acc, dict) and "used_today" in acc:
                    acc = dict(acc)
                    value = acc.pop("used_today")
                    if h == "*" and value is not None:
                        raise cfg.ConfigError("config.openrouter.accounts.*.used_today: only for a real key")
                    if value is not None:
                        used_today[h] = value
                hashed[h] = acc
            patch["openrouter"] = {**patch["openrouter"], "accounts": hashed}
        keys = (patch.get("openrouter") or {}).get("keys")
        if keys:  # key -> account name, stored by key hash like everything else
            patch["openrouter"] = {**patch["openrouter"], "keys": {key_hash(k): v for k, v in keys.items()}}
        with self.lock:
            self._config = cfg.merge(self._config, patch)
            now = self.now()
            for h, value in used_today.items():
                self._pool(self.account_id(h)).day.set(now, value)
            return cfg.merge({}, self._config)

    def config_view(self) -> dict:
        with self.lock:
            return cfg.merge({}, self._config)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            snap = self._stats.snapshot()
            now = self.now()
            snap["openrouter_day_used"] = {h: p.day.count(now) for h, p in self._pools.items()}
            return snap

    def record_endpoint(self, provider: str, path: str) -> None:
        with self.lock:
            self._stats.endpoint(provider, path)

    def record_request(self, provider: str, model: str) -> None:
        with self.lock:
            self._stats.request(provider, model)

    def record_response(self, provider: str, model: str | None, status: int, *, stream: bool, key_hash: str | None,
                        reason: str | None = None) -> None:
        with self.lock:
            self._stats.response(t=self.now(), provider=provider, model=model, status=status, stream=stream,
                                 key_hash=key_hash, reason=reason)

    # -- model switches --------------------------------------------------------------------------------------
    def switches(self, model: str) -> ModelSwitches:
        with self.lock:
            m = self._config.get("models", {}).get(model, {})
            latency_ms = m.get("latency_ms", self._config.get("latency_ms", 0))
            err = m.get("error_200")
            return ModelSwitches(
                gone=bool(m.get("gone")), busy=bool(m.get("busy")), status=m.get("status"),
                error_200=None if err in (None, False) else (502 if err is True else int(err)),
                stream_fault=m.get("stream_fault"), stall_s=float(m.get("stall_s", 30.0)),
                latency_s=float(latency_ms) / 1000.0, reject_prefill=bool(m.get("reject_prefill")))

    def take_status(self, model: str) -> int | None:
        """The forced status for this attempt, counting down ``status_count`` (absent = every time)."""
        with self.lock:
            m = self._config.get("models", {}).get(model)
            if not m or m.get("status") is None:
                return None
            status, count = m["status"], m.get("status_count")
            if count is not None:
                if count <= 0:
                    m.pop("status", None)
                    m.pop("status_count", None)
                    return None
                m["status_count"] = count - 1
                if count - 1 == 0:
                    m.pop("status", None)
                    m.pop("status_count", None)
            return status

    # -- OpenRouter account pool (providers.md §1.1) --------------------------------------------------------
    def _pool(self, h: str) -> AccountPool:
        pool = self._pools.get(h)
        if pool is None:
            pool = self._pools[h] = AccountPool()
        return pool

    def account_id(self, h: str) -> str:
        """The account a key belongs to (``openrouter.keys``): every key of one account shares one pool
        (providers.md §1.1 "Making additional accounts or API keys will not affect your rate limits"). A key
        named in no mapping is an account of its own, identified by its hash."""
        with self.lock:
            name = self._config.get("openrouter", {}).get("keys", {}).get(h)
            return h if name is None else "a" + key_hash("account:" + name)[:11]

    def _account_keys(self, h: str) -> list[str]:
        """The key hashes of ``h``'s account (``h`` last, so its own settings win)."""
        mine = self.account_id(h)
        others = sorted(k for k in self._config.get("openrouter", {}).get("keys", {}) if k != h
                        and self.account_id(k) == mine)
        return others + [h]

    def account(self, h: str) -> AccountSettings:
        with self.lock:
            accounts = self._config.get("openrouter", {}).get("accounts", {})
            merged = dict(accounts.get("*", {}))
            for k in self._account_keys(h):
                merged.update(accounts.get(k, {}))
            funded = merged.get("funded")
            if funded is None:
                funded = merged.get("daily_limit", DEFAULT_DAILY_LIMIT) >= FUNDED_DAILY_LIMIT
            daily = merged.get("daily_limit", FUNDED_DAILY_LIMIT if funded else DEFAULT_DAILY_LIMIT)
            return AccountSettings(daily_limit=daily, minute_limit=merged.get("minute_limit", DEFAULT_MINUTE_LIMIT),
                                   funded=funded, balance_negative=bool(merged.get("balance_negative")))

    def openrouter_admit(self, h: str) -> tuple[PoolBlock | None, AccountSettings]:
        """Count one free-model attempt against the account, or say which window refused it."""
        with self.lock:
            settings = self.account(h)
            block = self._pool(self.account_id(h)).try_admit(self.now(), minute_limit=settings.minute_limit,
                                            daily_limit=settings.daily_limit)
            return block, settings

    def openrouter_day(self, h: str) -> tuple[int, AccountSettings]:
        """(used today, settings) without counting anything (``GET /api/v1/key``)."""
        with self.lock:
            pool = self._pools.get(self.account_id(h))
            return (pool.day.count(self.now()) if pool else 0), self.account(h)

    # -- Groq per-model limits (providers.md §2.1, §2.2) ---------------------------------------------------
    def groq_caps(self, model: str) -> GroqCaps:
        with self.lock:
            base = GROQ_MODELS[model].caps
            over = self._config.get("groq", {}).get("limits", {}).get(model, {})
            return GroqCaps(rpm=over.get("rpm", base.rpm), rpd=over.get("rpd", base.rpd),
                            tpm=over.get("tpm", base.tpm), tpd=over.get("tpd", base.tpd))

    def _limits(self, h: str, model: str) -> GroqLimits:
        caps = self.groq_caps(model)
        lim = self._groq.get((h, model))
        if lim is None or lim.caps != caps:
            lim = self._groq[(h, model)] = GroqLimits(caps)
        return lim

    def _snapshot(self, lim: GroqLimits, now: float) -> GroqSnapshot:
        rpd, tpm = lim.buckets["rpd"], lim.buckets["tpm"]
        return GroqSnapshot(int(rpd.capacity), rpd.remaining(now), rpd.time_to_empty(now),
                            int(tpm.capacity), tpm.remaining(now), tpm.time_to_empty(now))

    def groq_admit(self, h: str, model: str, tokens: int) -> tuple[GroqBlock | None, GroqSnapshot]:
        """Reserve 1 request + ``tokens`` on every limit of (org, model), or none; plus the header snapshot."""
        with self.lock:
            now = self.now()
            lim = self._limits(h, model)
            block = lim.try_admit(tokens, now)
            return block, self._snapshot(lim, now)

    def groq_snapshot(self, h: str, model: str) -> GroqSnapshot:
        with self.lock:
            return self._snapshot(self._limits(h, model), self.now())

    def groq_settle(self, h: str, model: str, delta_tokens: int) -> None:
        with self.lock:
            self._limits(h, model).settle_tokens(delta_tokens, self.now())

    def groq_refund(self, h: str, model: str, tokens: int) -> None:
        with self.lock:
            self._limits(h, model).refund(tokens, self.now())
