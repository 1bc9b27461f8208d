"""OpenRouter replies -> facts (providers.md §1).

All public functions are total: they never raise and give ``Unknown`` / ``[]`` / ``None`` for what they
cannot read. Times are epoch seconds.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ._common import (
    Reply,
    choice_failed,
    end_of_minute,
    error_code,
    finite_now,
    header,
    next_utc_midnight,
    normalize_headers,
    read_reply,
    retry_after,
    scrub,
    to_int,
    to_float,
    to_status,
)
from .bounds import busy_wait, openrouter_until
from .facts import (
    ContextTooLong,
    CreditsExhausted,
    Exhausted,
    Fact,
    ModelBusy,
    ModelGone,
    Rejected,
    Remaining,
    ServerError,
    Unknown,
)

_PER_MODEL = re.compile(r"limit_rp([md])/", re.IGNORECASE)
_LIMITED_TO = re.compile(r"limited to (\d{1,9}) requests", re.IGNORECASE)
_NOT_GONE_404 = re.compile(r"no endpoints found (that|matching|which|with)", re.IGNORECASE)
# The X-RateLimit triplet inside text that is neither headers nor parseable JSON (e.g. LiteLLM's repr).
_RL_IN_TEXT = re.compile(r"x-ratelimit-(limit|remaining|reset)['\"]?\s*[:=]\s*['\"]?(\d{1,18})", re.IGNORECASE)


# --------------------------------------------------------------------------------------------- rate-limit data


class _RateLimit:
    """The ``X-RateLimit-*`` triplet of a platform 429 (providers.md §1.2).

    Looked for in the HTTP headers, then in ``error.metadata.headers`` (mirrored in the body), then in the raw
    text. ``reset`` is epoch seconds (the wire value is epoch milliseconds; a seconds epoch or a small delta is
    tolerated), ``None`` when absent or unreadable (``reset_raw`` keeps the wire text); it is NOT bounded here:
    :meth:`until` bounds it by what the limit can mean (``bounds.py``).
    """

    def __init__(self, h: dict[str, str], reply: Reply, now: float):
        sources = [h, normalize_headers(reply.metadata.get("headers"))]
        if reply.text:
            sources.append({f"x-ratelimit-{k.lower()}": v for k, v in _RL_IN_TEXT.findall(reply.text[:8192])})
        self.limit = self.remaining = None
        self.reset: float | None = None
        self.reset_raw: str | None = None
        self.present = False
        for src in sources:
            if any(header(src, f"x-ratelimit-{k}") is not None for k in ("limit", "remaining", "reset")):
                self.present = True
                self.limit = to_int(header(src, "x-ratelimit-limit"))
                self.remaining = to_int(header(src, "x-ratelimit-remaining"))
                self.reset_raw = header(src, "x-ratelimit-reset")
                if self.reset_raw is not None:
                    self.reset_raw = str(self.reset_raw)
                self.reset = _reset_epoch(to_float(self.reset_raw), now)
                break

    def until(self, window: str, now: float, default: float | None, model_only: bool = False) -> tuple[float, str]:
        """The reset, bounded by what ``window`` can mean; ``default`` when absent; (until, clamped)."""
        return openrouter_until(window, self.reset, self.reset_raw, now, default, model_only=model_only)


def _reset_epoch(v: float | None, now: float) -> float | None:
    """X-RateLimit-Reset -> epoch seconds. Wire format is epoch ms (§1.2); epoch s or a delta are tolerated."""
    if v is None:
        return None
    if v >= 1e11:
        ts = v / 1000.0
    elif v >= 1e9:
        ts = v
    else:
        ts = now + v
    return ts if math.isfinite(ts) else None


def _is_midnight(ts: float) -> bool:
    return abs(ts - round(ts / 86_400.0) * 86_400.0) < 1.0


def _window(reply: Reply, rl: _RateLimit, now: float) -> str:
    """"minute" or "day" for an account-pool limit (providers.md §1.1-1.3).

    The message ("free-models-per-day", "-per-min") or ``limit_source`` decides; otherwise a reset at a UTC
    midnight or more than 120 s away means the day, anything else the minute.
    """
    msg = reply.message.lower()
    source = reply.info("limit_source")
    if "per-day" in msg or "daily" in source or "_day" in source:
        return "day"
    if "per-min" in msg or "minute" in source:
        return "minute"
    if rl.reset is not None and (_is_midnight(rl.reset) or rl.reset - now > 120):
        return "day"
    return "minute"


def _default_until(window: str, now: float) -> float:
    return next_utc_midnight(now) if window == "day" else end_of_minute(now)


# --------------------------------------------------------------------------------------------- 429


def _says_platform(reply: Reply) -> bool:
    """The body names the free-tier account pool (§1.3): "free-models-per-*" or a free-tier ``limit_source``."""
    return "free-models-per" in reply.message.lower() or reply.info("limit_source").startswith("openrouter_free_tier")


def _upstream_provider(reply: Reply) -> str:
    v = reply.metadata.get("provider_name")
    return v.strip()[:80] if isinstance(v, str) else ""


def _is_upstream(reply: Reply) -> bool:
    """An upstream-provider 429 (§1.3): "Provider returned error", ``metadata.raw``/``provider_name``, or
    ``limit_source`` upstream_provider_shared_pool."""
    return (
        reply.message.lower().startswith("provider returned error")
        or "raw" in reply.metadata
        or bool(_upstream_provider(reply))
        or reply.info("limit_source") == "upstream_provider_shared_pool"
    )


def _busy_detail(reply: Reply) -> str:
    """``"<provider_name>: <raw>"`` — ``raw`` may be plain text ("error code: 1015") or the upstream's JSON, of
    which only the message is kept."""
    raw = reply.metadata.get("raw")
    raw_text = raw if isinstance(raw, str) else scrub(raw) if raw is not None else ""
    if raw_text.lstrip().startswith("{"):
        inner = read_reply(raw_text)
        raw_text = inner.message if inner.error else raw_text
    name = _upstream_provider(reply)
    parts = [p for p in (name, raw_text or reply.message) if p]
    return scrub(": ".join(parts)) or "upstream provider rate-limited"


def _rate_limited(reply: Reply, h: dict[str, str], now: float, *, stream: bool = False) -> Fact:
    """Classify a 429 (providers.md §1.2-1.3).

    Order: per-model shared capacity (``limit_rpm/``/``limit_rpd/``, ``openrouter_shared_capacity``) ->
    the body names the free-tier pool -> upstream provider ("Provider returned error", ``raw``,
    ``provider_name``) -> X-RateLimit-* present (platform, §1.3 "Distinguisher") -> generic. A generic 429 with only
    ``error_type: rate_limit_exceeded`` (or "Rate limit exceeded") is taken as the account minute being used up
    until the end of the current clock minute: the conservative choice, since every failed attempt also counts
    against the daily quota (§1.1). In a stream (``stream=True``) the generic case is ModelBusy instead.
    """
    rl = _RateLimit(h, reply, now)
    detail = scrub(reply.message) or "rate limited"
    per_model = _PER_MODEL.search(reply.message)
    if per_model or reply.info("limit_source") == "openrouter_shared_capacity":
        window = "day" if per_model and per_model.group(1).lower() == "d" else "minute"
        m = _LIMITED_TO.search(reply.message)
        capacity = rl.limit if rl.limit is not None else int(m.group(1)) if m else None
        until, clamped = rl.until(window, now, _default_until(window, now), model_only=True)
        return Exhausted(window, until, detail, capacity, model_only=True, clamped=clamped)
    upstream = _is_upstream(reply)
    if _says_platform(reply) or (rl.present and not upstream):
        window = _window(reply, rl, now)
        until, clamped = rl.until(window, now, _default_until(window, now))
        return Exhausted(window, until, detail, rl.limit, clamped=clamped)
    if upstream:
        return _busy(_busy_detail(reply), h, now)
    if stream:
        return _busy(detail, h, now)
    if reply.info("error_type") == "rate_limit_exceeded" or reply.message.lower().startswith("rate limit exceeded"):
        return Exhausted("minute", end_of_minute(now), detail)
    return _busy(detail, h, now)


def _busy(detail: str, h: dict[str, str], now: float) -> ModelBusy:
    wait, clamped = busy_wait(retry_after(h, now), "OpenRouter", now)
    return ModelBusy(detail, wait, clamped)


# --------------------------------------------------------------------------------------------- other statuses


def _by_status(st: int | None, reply: Reply, h: dict[str, str], now: float, stream: bool = False) -> Fact:
    """Map one (effective) status to a fact (providers.md §1.3 "Other statuses")."""
    msg = reply.message
    low = msg.lower()
    detail = scrub(msg) or (f"HTTP {st}" if st else "error")
    availability = reply.error.get("availability")
    avail = str(availability.get("code", "")).lower() if isinstance(availability, dict) else ""
    error_type = reply.info("error_type")

    if avail in ("free_variant_ended", "no_endpoints", "model_not_found"):
        return ModelGone(detail)
    if st == 429 or avail == "capacity_exhausted" or (st is None and error_type == "rate_limit_exceeded"):
        return _rate_limited(reply, h, now, stream=stream)
    if st == 402 or error_type == "payment_required":
        return CreditsExhausted(detail)
    if st == 404 or error_type == "not_found":
        return Rejected(404, detail) if _NOT_GONE_404.search(msg) else ModelGone(detail)
    if "maximum context length" in low or error_type == "context_length_exceeded":
        return ContextTooLong(detail)
    if st == 400 and "not a valid model id" in low:
        return ModelGone(detail)
    if st is None or st == 408 or st >= 500:
        wait, clamped = busy_wait(retry_after(h, now), "OpenRouter", now)
        return ServerError(st, detail, wait, clamped)
    if 400 <= st < 500:
        return Rejected(st, detail)
    return Unknown(detail)


def classify(status: int | None, headers: Any, body: Any, now: float) -> Fact | None:
    """Classify one OpenRouter reply (providers.md §1.2-1.3).

    Returns None only for a 2xx reply without an ``error`` object. A 2xx carrying a top-level ``error``
    (§1.3, "HTTP 200 carrying an error") is classified by ``error.code`` as if it were the status; without a
    usable code it is a ServerError. Never raises.
    """
    try:
        now, h = finite_now(now), normalize_headers(headers)
        st, reply = to_status(status), read_reply(body)
        if st is None or 200 <= st < 300:
            if not reply.error and not choice_failed(reply):
                if st is not None:
                    return None
                return Unknown(scrub(reply.text) or "no status and no error body")
            st = error_code(reply)
        return _by_status(st, reply, h, now)
    except Exception as exc:  # pragma: no cover - defensive
        return Unknown(f"unreadable OpenRouter reply ({type(exc).__name__})")


def remaining(headers: Any, body: Any, now: float) -> list[Remaining]:
    """What is left of the account pool, from X-RateLimit-* (headers, ``error.metadata.headers``) (§1.2).

    OpenRouter sends these only on 429s. The limit name is decided as in :func:`classify`. The triplet of a
    per-model shared-capacity 429 (``limit_rpm/...``) describes one model, not the account pool, so it yields
    ``[]`` (the :class:`Exhausted` fact with ``model_only=True`` carries it instead).
    """
    try:
        now, h = finite_now(now), normalize_headers(headers)
        reply = read_reply(body)
        rl = _RateLimit(h, reply, now)
        if rl.remaining is None or _PER_MODEL.search(reply.message):
            return []
        if reply.info("limit_source") in ("openrouter_shared_capacity", "upstream_provider_shared_pool"):
            return []
        window = _window(reply, rl, now)
        reset_at, clamped = rl.until(window, now, None)
        return [Remaining(window, rl.remaining, rl.limit, reset_at, clamped)]
    except Exception:  # pragma: no cover - defensive
        return []


def classify_stream_chunk(chunk: dict | str | bytes, now: float | None = None) -> Fact | None:
    """Classify one SSE ``data:`` payload of a stream (providers.md §1.3 "Mid-stream").

    A chunk with an ``error`` object and/or ``finish_reason: "error"`` is classified by ``error.code``: 429 is
    ModelBusy unless it is clearly the platform free-tier limit or a per-model capacity limit (then
    Exhausted); 5xx, unknown or missing codes are ServerError; other codes as in :func:`classify`. Normal
    chunks, keep-alive comments, ``[DONE]`` and garbage give None. ``now`` (epoch s, default: the wall clock)
    is used only for default reset times.
    """
    try:
        reply = _read_chunk(chunk)
        if reply is None or (not reply.error and not choice_failed(reply)):
            return None
        now = finite_now(now)
        st = error_code(reply)
        fact = _by_status(st, reply, {}, now, stream=True)
        if isinstance(fact, Unknown):
            return ServerError(st, fact.detail)
        return fact
    except Exception:  # pragma: no cover - defensive
        return None


def _read_chunk(chunk: Any) -> Reply | None:
    """A whole SSE payload as JSON (optionally still prefixed with ``data:``); no embedded-JSON search."""
    if isinstance(chunk, dict):
        return read_reply(chunk)
    if isinstance(chunk, (bytes, bytearray)):
        chunk = bytes(chunk[: 1 << 20]).decode("utf-8", "replace")
    if not isinstance(chunk, str) or len(chunk) > (1 << 20):
        return None
    text = chunk.strip()
    if text.startswith("data:"):
        text = text[5:].strip()
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except Exception:
        return None
    return read_reply(obj) if isinstance(obj, dict) else None


__all__ = ["classify", "remaining", "classify_stream_chunk"]
