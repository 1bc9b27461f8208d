"""Groq replies -> facts (providers.md §2).

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
    as_str,
    choice_failed,
    error_code,
    finite_now,
    header,
    normalize_headers,
    read_reply,
    retry_after,
    scrub,
    to_float,
    to_int,
    to_status,
)
from .bounds import GROQ_WINDOW_S, busy_wait, groq_wait
from .facts import (
    ContextTooLong,
    Exhausted,
    Fact,
    LimitName,
    ModelGone,
    Rejected,
    Remaining,
    RequestTooLarge,
    ServerError,
    Unknown,
)

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DUR_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_PLAIN = re.compile(r"\d+(?:\.\d*)?|\.\d+")

_KIND = re.compile(r"on (tokens|requests) per (minute|day)", re.IGNORECASE)
_ABBR = re.compile(r"\((TPM|RPM|TPD|RPD)\)", re.IGNORECASE)
_LIMIT = re.compile(r"\bLimit:? (\d{1,15})")
_USED = re.compile(r"\bUsed:? (\d{1,15})")
_REQUESTED = re.compile(r"\bRequested:? (\d{1,15})")
_TRY_AGAIN = re.compile(r"try again in ([0-9.]+[0-9.a-zµμ]*)", re.IGNORECASE)
_NAMES: dict[str, LimitName] = {"rpm": "rpm", "rpd": "rpd", "tpm": "tpm", "tpd": "tpd"}
_UPSELL = re.compile(r"\s*Need more tokens\?.*$", re.IGNORECASE | re.DOTALL)

#: Groq error codes that name a status when the HTTP status is missing or 2xx (providers.md §2.3).
_CODE_STATUS = {
    "rate_limit_exceeded": 429,
    "model_not_found": 404,
    "model_decommissioned": 400,
    "context_length_exceeded": 400,
    "invalid_api_key": 401,
    "capacity_exceeded": 498,
}


def parse_duration(text: Any) -> float | None:
    """Seconds from a Go ``time.Duration`` string (providers.md §2.2).

    ``"7.66s"``, ``"2m59.56s"``, ``"16.239999999s"``, ``"1m0.363142857s"``, ``"820ms"``, ``"1h2m3s"``,
    ``"500us"``/``"500µs"``, ``"0s"``; a plain number (``"2"``) means seconds, as in ``retry-after``.
    Negative, empty, non-finite or malformed input -> None.
    """
    try:
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            return to_float(text)
        s = as_str(text, 128)
        if s is None:
            return None
        s = s.strip()
        if s.startswith("+"):
            s = s[1:]
        if not s:
            return None
        if _PLAIN.fullmatch(s):
            v = float(s)
            return v if math.isfinite(v) else None
        total, pos = 0.0, 0
        while pos < len(s):
            m = _DUR_PART.match(s, pos)
            if not m:
                return None
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        return round(total, 9) if math.isfinite(total) else None
    except Exception:  # pragma: no cover - defensive
        return None


def remaining(headers: Any, now: float) -> list[Remaining]:
    """Calibration data from Groq's ``x-ratelimit-*`` headers (providers.md §2.2).

    ``-requests`` describe the DAY (``"rpd"``), ``-tokens`` the MINUTE (``"tpm"``); ``reset_at`` is
    ``now + parse_duration(reset)``, bounded by the bucket's window (60 s / 86 400 s, ``bounds.py``). An entry whose
    remaining count is missing or garbled is left out; a garbled limit or reset becomes None.
    """
    try:
        now, h = finite_now(now), normalize_headers(headers)
        out: list[Remaining] = []
        for suffix, name in (("requests", "rpd"), ("tokens", "tpm")):
            left = to_int(header(h, f"x-ratelimit-remaining-{suffix}"))
            if left is None:
                continue
            raw = header(h, f"x-ratelimit-reset-{suffix}")
            wait, clamped = groq_wait(name, parse_duration(raw), f"x-ratelimit-reset-{suffix}: {raw}", now)
            reset_at = now + wait if wait is not None else None
            out.append(Remaining(name, left, to_int(header(h, f"x-ratelimit-limit-{suffix}")), reset_at, clamped))
        return out
    except Exception:  # pragma: no cover - defensive
        return []


def _limit_name(msg: str, reply: Reply) -> LimitName:
    """Which of rpm/rpd/tpm/tpd a 429 names; unreadable -> a guess from ``error.type``, default "rpm"."""
    abbr = _ABBR.search(msg)
    if abbr:
        return _NAMES[abbr.group(1).lower()]
    kind = _KIND.search(msg)
    if kind:
        return _NAMES[kind.group(1)[0].lower() + "p" + kind.group(2)[0].lower()]
    return "tpm" if reply.info("type") == "tokens" else "rpm"


def _num(pattern: re.Pattern[str], msg: str) -> int | None:
    m = pattern.search(msg)
    return int(m.group(1)) if m else None


def _wait(limit: LimitName, msg: str, h: dict[str, str], now: float) -> tuple[float, str]:
    """Seconds until the limit admits the request again (providers.md §2.2-2.3), and the ``clamped`` note.

    Preference: the body's "Please try again in <dur>" -> ``retry-after`` -> the reset header of that limit
    (``-tokens`` for tpm, ``-requests`` for rpd) -> the token-bucket formula (used + requested - limit) x
    window / limit (§2.2 INF) -> window / limit -> 60 s. The first stated wait that can be read is used, bounded by
    the bucket's window (rpm / tpm 60 s, rpd / tpd 86 400 s): a bucket refills completely within it.
    """
    m = _TRY_AGAIN.search(msg)
    said = [
        m.group(1).rstrip(".") if m else None,
        header(h, "retry-after"),
        header(h, "x-ratelimit-reset-tokens") if limit == "tpm" else None,
        header(h, "x-ratelimit-reset-requests") if limit == "rpd" else None,
    ]
    names = ["try again in ", "retry-after: ", "x-ratelimit-reset-tokens: ", "x-ratelimit-reset-requests: "]
    candidates = [
        parse_duration(said[0]) if said[0] else None,
        retry_after(h, now),
        parse_duration(said[2]) if said[2] else None,
        parse_duration(said[3]) if said[3] else None,
    ]
    for c, text, name in zip(candidates, said, names):
        if c is not None:
            wait, clamped = groq_wait(limit, c, f"{name}{text}", now)
            if wait is not None:
                return wait, clamped
    cap, used, req = _num(_LIMIT, msg), _num(_USED, msg), _num(_REQUESTED, msg)
    window = GROQ_WINDOW_S.get(limit, 60.0)
    if cap:
        over = (used + req - cap) if used is not None and req is not None else 1
        return min(max(over, 1) * window / cap, window), ""
    return 60.0, ""


def _short(msg: str) -> str:
    return scrub(_UPSELL.sub("", msg[:4096]))


def classify(status: int | None, headers: Any, body: Any, now: float) -> Fact | None:
    """Classify one Groq reply (providers.md §2.3).

    429 "Rate limit reached ... (TPM|RPM|RPD|TPD): Limit L ... try again in D" -> Exhausted(limit, now + D,
    capacity=L); 413 (and the 2024 429) "Request too large" -> RequestTooLarge; 404 / model_not_found /
    model_decommissioned -> ModelGone; context_length_exceeded -> ContextTooLong; 498 capacity_exceeded, 408,
    5xx -> ServerError; other 4xx -> Rejected. A 2xx with an ``error`` object is classified by its code/type
    as a failure. Returns None only for a 2xx without an error. Never raises.
    """
    try:
        now, h = finite_now(now), normalize_headers(headers)
        st, reply = to_status(status), read_reply(body)
        code = reply.info("code")
        if st is None or 200 <= st < 300:
            if not reply.error and not choice_failed(reply):
                if st is not None:
                    return None
                return Unknown(scrub(reply.text) or "no status and no error body")
            st = _CODE_STATUS.get(code) or error_code(reply)
        msg = reply.message
        low = msg.lower()
        detail = _short(msg) or (f"HTTP {st}" if st else "error")

        if "request too large" in low or (st == 413 and code == "rate_limit_exceeded"):
            return RequestTooLarge(detail, _num(_LIMIT, msg))
        if st == 404 or code in ("model_not_found", "model_decommissioned") or "decommissioned" in low:
            return ModelGone(detail)
        if code == "context_length_exceeded" or (
            st == 400 and ("context length" in low or "context window" in low or "reduce the length" in low)
        ):
            return ContextTooLong(detail)
        if st == 429 or code == "rate_limit_exceeded":
            limit = _limit_name(msg, reply)
            wait, clamped = _wait(limit, msg, h, now)
            return Exhausted(limit, now + wait, detail, _num(_LIMIT, msg), clamped=clamped)
        if st is None or st in (408, 498) or st >= 500 or code == "capacity_exceeded":
            wait, clamped = busy_wait(retry_after(h, now), "Groq", now)
            return ServerError(st, detail, wait, clamped)
        if st == 413:
            return RequestTooLarge(detail, _num(_LIMIT, msg))
        if 400 <= st < 500:
            return Rejected(st, detail)
        return Unknown(detail)
    except Exception as exc:  # pragma: no cover - defensive
        return Unknown(f"unreadable Groq reply ({type(exc).__name__})")


def classify_stream_chunk(chunk: dict | str | bytes, now: float | None = None) -> Fact | None:
    """Classify one SSE ``data:`` payload of a Groq stream: an ``error`` object -> as :func:`classify` would
    for that error with no status; a normal chunk, ``[DONE]`` or garbage -> None."""
    try:
        if isinstance(chunk, (bytes, bytearray)):
            chunk = bytes(chunk[: 1 << 20]).decode("utf-8", "replace")
        if isinstance(chunk, str):
            text = chunk.strip()
            text = text[5:].strip() if text.startswith("data:") else text
            if not text.startswith("{") or len(text) > (1 << 20):
                return None
            chunk = json.loads(text)
        if not isinstance(chunk, dict) or not chunk.get("error"):
            return None
        fact = classify(None, None, {"error": chunk["error"]}, finite_now(now))
        return ServerError(None, fact.detail) if isinstance(fact, Unknown) else fact
    except Exception:
        return None


__all__ = ["parse_duration", "remaining", "classify", "classify_stream_chunk"]
