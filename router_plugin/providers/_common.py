"""Helpers shared by the provider parsers: bounded JSON extraction, header lookup, number parsing, scrubbing.

Everything here is total: any input gives a value (``None``, ``{}``, ``""``), never an exception, and the work
is bounded (only the first ``MAX_SCAN`` characters of a body are ever looked at).
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from ..redact import scrub as redact
from .facts import Fact, ModelBusy, ModelGone, Rejected, ServerError, Unknown

#: Only this much of a body is read (LiteLLM messages carry the provider JSON near their start).
MAX_SCAN = 64 * 1024
#: At most this many ``{`` positions are tried as the start of the embedded JSON object.
_MAX_STARTS = 16
#: A Python-repr candidate longer than this is not evaluated.
_MAX_REPR = 16 * 1024
#: At most this many header pairs are read.
_MAX_HEADERS = 256
#: Facts' ``detail`` strings are cut to this length.
MAX_DETAIL = 300
#: Sanity window for provider reset times: anything outside [now - 1 day, now + 8 days] is garbage.
_RESET_PAST = 86_400.0
_RESET_FUTURE = 8 * 86_400.0

_SECRETS = re.compile(
    r"Bearer\s+\S+|sk-or-[A-Za-z0-9-]+|gsk_[A-Za-z0-9]+|sk-[A-Za-z0-9_-]{16,}",
    re.IGNORECASE,
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SPACES = re.compile(r"\s+")
_INT = re.compile(r"\s*\+?(\d{1,18})\s*")
_NUM = re.compile(r"\s*\+?(\d{1,18}(?:\.\d{1,12})?|\.\d{1,12})\s*")


# --------------------------------------------------------------------------------------------- numbers / time


def finite_now(now: Any) -> float:
    """``now`` as a finite float; a missing or nonsensical ``now`` falls back to the wall clock."""
    if isinstance(now, (int, float)) and not isinstance(now, bool) and math.isfinite(now):
        return float(now)
    return time.time()


def to_int(value: Any) -> int | None:
    """A non-negative integer from ``"50"``, ``b"50"`` or ``50``; anything else (negative, float text, junk) -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 10**18 else None
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value >= 0 and value == int(value) and value < 1e18 else None
    text = as_str(value, 64)
    m = _INT.fullmatch(text) if text else None
    return int(m.group(1)) if m else None


def to_float(value: Any) -> float | None:
    """A non-negative finite float from a plain decimal (``"2"``, ``"1.5"``); no exponents, NaN or inf."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        v = float(value) if abs(value) < 1e18 else math.inf
        return v if math.isfinite(v) and v >= 0 else None
    text = as_str(value, 64)
    m = _NUM.fullmatch(text) if text else None
    return float(m.group(1)) if m else None


def to_status(value: Any) -> int | None:
    """An HTTP status (100-999) from an int or a digit string; anything else -> None."""
    v = to_int(value)
    return v if v is not None and 100 <= v <= 999 else None


def end_of_minute(now: float) -> float:
    """The next clock-minute boundary after ``now`` (providers.md §1.1: OpenRouter minutes are clock-aligned)."""
    return (math.floor(now / 60.0) + 1) * 60.0


def next_utc_midnight(now: float) -> float:
    """The next 00:00:00Z after ``now`` (providers.md §1.1: the OpenRouter day resets at UTC midnight)."""
    return (math.floor(now / 86_400.0) + 1) * 86_400.0


def plausible(ts: float | None, now: float) -> float | None:
    """``ts`` if it is a finite time within [now - 1 day, now + 8 days], else None (garbage reset values)."""
    if ts is None or not math.isfinite(ts):
        return None
    return ts if now - _RESET_PAST <= ts <= now + _RESET_FUTURE else None


def retry_after(headers: dict[str, str], now: float) -> float | None:
    """``Retry-After`` (normalized headers) in seconds: decimal seconds or an HTTP date (RFC 9110); junk -> None."""
    raw = header(headers, "retry-after")
    if raw is None:
        return None
    secs = to_float(raw)
    if secs is None:
        try:
            secs = parsedate_to_datetime(raw).timestamp() - now
        except Exception:
            return None
        secs = max(0.0, secs)
    return secs if math.isfinite(secs) and secs <= _RESET_FUTURE else None


# --------------------------------------------------------------------------------------------- text / secrets


def as_str(value: Any, limit: int = MAX_SCAN) -> str | None:
    """``value`` as text (str, or bytes decoded leniently), cut to ``limit`` characters; other types -> None."""
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value[: limit * 4]).decode("utf-8", "replace")[:limit]
        except Exception:
            return None
    return None


def scrub(text: Any, limit: int = MAX_DETAIL) -> str:
    """A short, single-line, secret-free version of ``text`` for a fact's ``detail``.

    API keys (``sk-or-...``, ``gsk_...``, ``sk-...``, ``Bearer ...``) become ``[redacted]``; the Groq ``org_...``
    id is kept. The result is at most ``limit`` characters.
    """
    try:
        s = text if isinstance(text, str) else as_str(text) if isinstance(text, (bytes, bytearray)) else str(text)
        s = redact(s[:4096])  # key shapes and the configured keys (router_plugin.redact)
        s = _SPACES.sub(" ", _CONTROL.sub(" ", s)).strip()
    except Exception:
        return "(unprintable)"
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "…"


# --------------------------------------------------------------------------------------------- headers


def _key(k: Any) -> str | None:
    s = as_str(k, 200)
    return s.strip().lower() if s is not None else None


def _value(v: Any) -> str | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    s = as_str(v, 1024)
    return s.strip() if s is not None else None


def normalize_headers(headers: Any) -> dict[str, str]:
    """Lower-cased ``{name: value}`` from a dict, ``httpx.Headers``, a list of pairs or None (first 256 pairs)."""
    out: dict[str, str] = {}
    try:
        if headers is None:
            return out
        if isinstance(headers, Mapping) or hasattr(headers, "items"):
            items = headers.items()
        elif isinstance(headers, (list, tuple)):
            items = headers
        else:
            return out
        for n, pair in enumerate(items):
            if n >= _MAX_HEADERS:
                break
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                continue
            k, v = _key(pair[0]), _value(pair[1])
            if k and v is not None and k not in out:
                out[k] = v
    except Exception:
        pass
    return out


def header(headers: dict[str, str], name: str) -> str | None:
    """Look ``name`` up in headers already passed through :func:`normalize_headers`.

    Also finds the forms LiteLLM re-exports (litellm-1.108-notes §3): ``llm_provider-<name>`` and the typed
    ``<name with _ for ->`` keys of ``additional_headers``.
    """
    name = name.lower()
    for k in (name, "llm_provider-" + name, name.replace("-", "_")):
        if k in headers:
            return headers[k]
    return None


# --------------------------------------------------------------------------------------------- bodies


def _balanced_end(text: str, start: int, limit: int) -> int:
    """Index just past the ``}`` closing the object opened at ``start`` (JSON or Python-repr quoting), or -1
    if it does not close within ``limit`` characters."""
    depth, quote, escaped = 0, "", False
    for i in range(start, min(len(text), start + limit)):
        c = text[i]
        if quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
            if depth < 0:
                return -1
    return -1


def first_json_object(text: str) -> dict | None:
    """The first ``{...}`` embedded in ``text`` that parses as a dict.

    Handles LiteLLM's wrapping (``"litellm.RateLimitError: ... OpenrouterException - {json}"``) and the Python
    repr LiteLLM uses for mid-stream errors (``Metadata: {'headers': {...}, 'provider_name': None}``). Only the
    first ``MAX_SCAN`` characters, at most 16 candidate starts (4 of them Python-repr, 16 KiB each) are tried,
    so the work stays bounded.
    """
    text = text[:MAX_SCAN]
    decoder = json.JSONDecoder()
    pos, tries, repr_tries = text.find("{"), 0, 0
    while pos != -1 and tries < _MAX_STARTS:
        tries += 1
        try:
            obj, _ = decoder.raw_decode(text, pos)
            if isinstance(obj, dict):
                return obj
        except Exception:
            end = -1
            if text.startswith("{'", pos) and repr_tries < 4:
                repr_tries += 1
                end = _balanced_end(text, pos, _MAX_REPR)
            if end > 0:
                try:
                    obj = ast.literal_eval(text[pos:end])
                    if isinstance(obj, dict):
                        return obj
                except Exception:
                    pass
        pos = text.find("{", pos + 1)
    return None


@dataclass
class Reply:
    """A provider reply read leniently.

    ``obj`` is the top-level JSON object (or None), ``error`` the provider's error object (``{}`` if none),
    ``text`` the raw body text (first 64 KiB; ``""`` for dict bodies).
    """

    obj: dict | None = None
    error: dict = field(default_factory=dict)
    text: str = ""

    @property
    def message(self) -> str:
        """``error.message``; without one, the raw text (LiteLLM's repr-style messages carry it there)."""
        m = self.error.get("message")
        if isinstance(m, str) and m:
            return m[:MAX_SCAN]
        return _unwrap(self.text)

    @property
    def metadata(self) -> dict:
        m = self.error.get("metadata")
        return m if isinstance(m, dict) else {}

    def info(self, name: str) -> str:
        """``error.<name>`` or ``error.metadata.<name>`` as a lower-case string (``""`` when absent)."""
        for src in (self.error, self.metadata):
            v = src.get(name)
            if isinstance(v, (str, int)) and not isinstance(v, bool):
                return str(v)[:200].lower()
        return ""


_LITELLM_PREFIX = re.compile(r"^\s*litellm\.\w+:\s*(?:\w+:\s*)?(?:\w*Exception\s*-\s*)?")
_REPR_MESSAGE = re.compile(r"^Message:\s*(.*?),\s*Metadata:", re.DOTALL)


def _unwrap(text: str) -> str:
    """Drop LiteLLM's ``"litellm.RateLimitError: RateLimitError: OpenrouterException - "`` prefix and keep only
    the message of its ``"Message: ..., Metadata: {...}"`` stream-error form."""
    text = _LITELLM_PREFIX.sub("", text[:MAX_SCAN], count=1)
    m = _REPR_MESSAGE.match(text[:8192])
    return m.group(1) if m else text


def _error_of(obj: dict) -> dict:
    e = obj.get("error")
    if isinstance(e, dict):
        return e
    if isinstance(e, str) and e:
        return {"message": e}
    if isinstance(obj.get("message"), str) and any(k in obj for k in ("code", "type", "metadata")):
        return obj  # already the error object itself
    if any(k in obj for k in ("headers", "provider_name", "raw", "limit_source")):
        return {"metadata": obj}  # LiteLLM's "Message: ..., Metadata: {...}" repr of a stream error
    return {}


def read_reply(body: Any) -> Reply:
    """Read ``body`` (None, bytes, str, dict, or text with embedded JSON) into a :class:`Reply`. Never raises."""
    try:
        if isinstance(body, list) and body and isinstance(body[0], Mapping):
            body = body[0]
        if isinstance(body, Mapping):
            obj = dict(body)
            return Reply(obj, _error_of(obj), "")
        text = as_str(body)
        if not text:
            return Reply()
        obj = first_json_object(text)
        return Reply(obj, _error_of(obj) if obj else {}, text)
    except Exception:
        return Reply()


def error_code(reply: Reply) -> int | None:
    """``error.code`` (or the newer ``error.http_status``) as an HTTP status, if it is one."""
    for k in ("code", "http_status", "status"):
        st = to_status(reply.error.get(k))
        if st is not None:
            return st
    return None


def choice_failed(reply: Reply) -> bool:
    """True if a choice of the reply ended with ``finish_reason: "error"`` (providers.md §1.3, mid-stream)."""
    choices = reply.obj.get("choices") if reply.obj else None
    if not isinstance(choices, list):
        return False
    return any(isinstance(c, dict) and c.get("finish_reason") == "error" for c in choices[:16])


# --------------------------------------------------------------------------------------------- generic


def generic_classify(status: Any, headers: Any, body: Any, now: Any) -> Fact | None:
    """Classification by status alone, for a provider this package does not know.

    2xx without an error -> None; 429 -> ModelBusy; 404 -> ModelGone; 408/5xx -> ServerError; other 4xx -> Rejected.
    """
    try:
        now, h = finite_now(now), normalize_headers(headers)
        st = to_status(status)
        reply = read_reply(body)
        if st is None or 200 <= st < 300:
            if not reply.error and not choice_failed(reply):
                return None if st is not None else Unknown(scrub(reply.text) or "no status and no error")
            st = error_code(reply)
        detail = scrub(reply.message) or f"HTTP {st}"
        if st == 429:
            return ModelBusy(detail, retry_after(h, now))
        if st == 404:
            return ModelGone(detail)
        if st is None or st == 408 or st >= 500:
            return ServerError(st, detail, retry_after(h, now))
        if 400 <= st < 500:
            return Rejected(st, detail)
        return Unknown(detail)
    except Exception as exc:  # pragma: no cover - defensive
        return Unknown(f"unreadable reply ({type(exc).__name__})")
