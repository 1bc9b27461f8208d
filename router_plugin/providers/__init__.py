"""Provider replies -> typed facts (see ``facts.py``), one module per provider.

    from router_plugin import providers
    fact = providers.classify("groq", 429, headers, body, now)
    fact = providers.classify_exception("openrouter", exc, now)      # a LiteLLM exception
    left = providers.remaining("groq", headers, body, now)

Every function here is total: whatever the input, it returns a fact / list / None and never raises.
"""

from __future__ import annotations

from typing import Any

from . import groq, openrouter
from ._common import finite_now, generic_classify, scrub
from .facts import (
    ContextTooLong,
    CreditsExhausted,
    Exhausted,
    Fact,
    LimitName,
    ModelBusy,
    ModelGone,
    Rejected,
    Remaining,
    RequestTooLarge,
    ServerError,
    Unknown,
)

__all__ = [
    "ContextTooLong",
    "CreditsExhausted",
    "Exhausted",
    "Fact",
    "LimitName",
    "ModelBusy",
    "ModelGone",
    "Rejected",
    "Remaining",
    "RequestTooLarge",
    "ServerError",
    "Unknown",
    "classify",
    "classify_exception",
    "classify_stream_chunk",
    "exception_remaining",
    "groq",
    "openrouter",
    "provider_of",
    "remaining",
]

#: Exception class names (anywhere in the MRO) that mean "no usable reply": timeouts and connection failures.
_TIMEOUT_NAMES = frozenset({"Timeout", "APITimeoutError", "TimeoutError", "TimeoutException", "ReadTimeout"})
_CONNECTION_NAMES = frozenset({"APIConnectionError", "ConnectError", "ConnectionError", "RemoteProtocolError"})


def provider_of(model: Any) -> str | None:
    """``"openrouter"`` for ``openrouter/...``, ``"groq"`` for ``groq/...``, else None."""
    if not isinstance(model, str):
        return None
    prefix = model.split("/", 1)[0].strip().lower() if "/" in model else ""
    return prefix if prefix in ("openrouter", "groq") else None


def classify(provider: Any, status: Any, headers: Any, body: Any, now: Any) -> Fact | None:
    """Classify one reply of ``provider`` ("openrouter", "groq"; anything else: by status alone)."""
    try:
        if provider == "openrouter":
            return openrouter.classify(status, headers, body, now)
        if provider == "groq":
            return groq.classify(status, headers, body, now)
        return generic_classify(status, headers, body, now)
    except Exception as exc:  # pragma: no cover - the modules are total already
        return Unknown(f"unclassifiable reply ({type(exc).__name__})")


def remaining(provider: Any, headers: Any, body: Any, now: Any) -> list[Remaining]:
    """Calibration data (what is left of which limit) from one reply of ``provider``; [] when none."""
    try:
        if provider == "openrouter":
            return openrouter.remaining(headers, body, now)
        if provider == "groq":
            return groq.remaining(headers, now)
    except Exception:  # pragma: no cover
        pass
    return []


def classify_stream_chunk(provider: Any, chunk: Any, now: Any = None) -> Fact | None:
    """Classify one SSE data payload of a stream; None for normal chunks and garbage."""
    try:
        if provider == "openrouter":
            return openrouter.classify_stream_chunk(chunk, now)
        if provider == "groq":
            return groq.classify_stream_chunk(chunk, now)
    except Exception:  # pragma: no cover
        pass
    return None


# --------------------------------------------------------------------------------------------- exceptions


def _attr(obj: Any, name: str) -> Any:
    """``getattr`` that survives properties which raise (some LiteLLM exceptions' ``.response`` does)."""
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _class_names(exc: BaseException) -> set[str]:
    try:
        return {c.__name__ for c in type(exc).__mro__}
    except Exception:  # pragma: no cover
        return set()


def _nonempty(h: Any) -> bool:
    try:
        return h is not None and len(h) > 0
    except Exception:
        return False


def _exc_parts(exc: BaseException) -> tuple[int | None, Any, str]:
    """(status, headers, body text) of a LiteLLM exception (litellm-1.108-notes §3).

    Headers: ``litellm_response_headers`` (httpx.Headers), else ``response.headers``, else ``headers``.
    Body: ``message`` (the provider JSON is embedded after a prefix), else ``str(exc)``.
    """
    status = _attr(exc, "status_code")
    headers = _attr(exc, "litellm_response_headers")
    if not _nonempty(headers):
        headers = _attr(_attr(exc, "response"), "headers")
    if not _nonempty(headers):
        headers = _attr(exc, "headers")
    text = _attr(exc, "message")
    if not isinstance(text, str) or not text:
        try:
            text = str(exc)
        except Exception:
            text = ""
    return status, headers, text


def _classify_exc(provider: Any, exc: BaseException, now: float, depth: int) -> Fact:
    names = _class_names(exc)
    status, headers, text = _exc_parts(exc)
    original = _attr(exc, "original_exception")
    if depth < 3 and isinstance(original, BaseException) and original is not exc:
        inner = _classify_exc(provider, original, now, depth + 1)  # MidStreamFallbackError wraps the real one
        if not isinstance(inner, Unknown):
            return inner
    if names & _TIMEOUT_NAMES:
        st = status if isinstance(status, int) and not isinstance(status, bool) and status >= 400 else None
        return ServerError(st, scrub(text) or "timeout")
    if names & _CONNECTION_NAMES:
        # LiteLLM also uses APIConnectionError for replies it could not map: read the body first.
        fact = classify(provider, None, headers, text, now)
        if fact is None or isinstance(fact, Unknown):
            return ServerError(None, scrub(text) or "connection error")
        return fact
    fact = classify(provider, status, headers, text, now)
    if "ContextWindowExceededError" in names and not isinstance(fact, ContextTooLong):
        return ContextTooLong(scrub(text) or "context window exceeded")
    if fact is None:
        return Unknown(scrub(text) or f"{type(exc).__name__} without an error body")
    return fact


def classify_exception(provider: Any, exc: BaseException, now: Any) -> Fact:
    """Classify a LiteLLM exception raised for a call to ``provider``.

    Status from ``exc.status_code``, headers from ``exc.litellm_response_headers`` (falling back to
    ``exc.response.headers``, guarded), body from ``exc.message`` / ``str(exc)``. Timeouts
    (``Timeout``/``APITimeoutError`` in the MRO) -> ServerError(408 or None); connection errors -> the body's
    classification if it has one, else ServerError(None). Never raises; never returns None.
    """
    try:
        return _classify_exc(provider, exc, finite_now(now), 0)
    except Exception as err:  # pragma: no cover - defensive
        return Unknown(f"unclassifiable exception ({type(err).__name__})")


def exception_remaining(provider: Any, exc: BaseException, now: Any) -> list[Remaining]:
    """Calibration data carried by a LiteLLM exception (headers and embedded body)."""
    try:
        _, headers, text = _exc_parts(exc)
        return remaining(provider, headers, text, now)
    except Exception:  # pragma: no cover
        return []
