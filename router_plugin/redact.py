"""Keep API keys out of everything the plugin writes. Pure: no LiteLLM, no I/O.

An upstream may echo what it was sent (a hostile or broken server puts the ``Authorization`` header into its error
body), and LiteLLM copies that body into its exception text; the plugin quotes exception text in its log lines,
its own errors (``QuotaExhaustedError``, ``ChainFailedError``, ``BudgetExceededError``,
``StreamInterruptedError``), the reasons it stores for a set-aside model and its events. Every such text goes
through :func:`scrub` first:

* key-shaped text: ``Bearer <token>``, ``sk-or-v1-...``, ``gsk_...``, ``sk-...`` (16+ characters);
* the deployments' own configured keys, whatever their shape (registered with :func:`remember`), including their
  longer fragments (a message cut short may end inside a key).

Each becomes ``[redacted]``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"

#: Key shapes: OpenRouter ``sk-or-v1-<hex>``, Groq ``gsk_<alnum>``, OpenAI-style ``sk-...``, any bearer token.
KEY_SHAPES = re.compile(
    r"Bearer\s+(?!\[redacted\])[^\s\"',;}\]]+|sk-or-[A-Za-z0-9_-]+|gsk_[A-Za-z0-9_-]+|sk-[A-Za-z0-9_-]{16,}",
    re.IGNORECASE,
)
#: A configured key shorter than this is not scrubbed as a literal (it would blank ordinary words).
MIN_SECRET = 8
#: A fragment of a configured key at the end of a cut-short text is scrubbed from this length on.
MIN_FRAGMENT = 8

_known: set[str] = set()
_pattern: re.Pattern[str] | None = None
_lock = threading.Lock()


def remember(secrets: Iterable[Any]) -> None:
    """Register configured secrets (API keys): :func:`scrub` removes them from any text from now on."""
    global _pattern
    new = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET and not s.startswith("os.environ/")}
    with _lock:
        if new <= _known:
            return
        _known.update(new)
        ordered = sorted(_known, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def _cut_fragment(text: str) -> str:
    """A text cut short may end with the first part of a configured key: remove that part too."""
    for secret in _known:
        for n in range(min(len(secret) - 1, len(text)), MIN_FRAGMENT - 1, -1):
            if text.endswith(secret[:n]):
                return text[: len(text) - n] + REDACTED
    return text


def scrub(text: Any) -> str:
    """``text`` (any object, as ``str``) with every key-shaped token and every registered secret redacted.

    Never raises; an object whose ``str`` fails becomes ``"(unprintable)"``.
    """
    try:
        s = text if isinstance(text, str) else str(text)
    except Exception:
        return "(unprintable)"
    pattern = _pattern
    if pattern is not None:
        s = pattern.sub(REDACTED, s)
        if _known:
            s = _cut_fragment(s)
    return KEY_SHAPES.sub(REDACTED, s)


__all__ = ["KEY_SHAPES", "REDACTED", "remember", "scrub"]


def scrub_exception(error: BaseException) -> None:
    """Remove key-shaped text and the configured keys from what a caller will read of ``error`` (its message, args
    and body), in place."""
    try:
        message = getattr(error, "message", None)
        if isinstance(message, str):
            error.message = scrub(message)
        error.args = tuple(scrub(a) if isinstance(a, str) else a for a in error.args)
        body = getattr(error, "body", None)
        if isinstance(body, (dict, str)):
            error.body = scrub(body) if isinstance(body, str) else {k: scrub(v) if isinstance(v, str) else v
                                                                    for k, v in body.items()}
    except Exception:  # an exception that refuses new attributes keeps its text
        pass
