"""Bounds on the reset times and waits providers state: a value no limit can mean never blocks a pool for days.

Issue 11 item 3: OpenRouter's ``X-RateLimit-Reset: 600000`` (seconds where milliseconds are due) blocked an account's
day for 166 h, a per-minute 429 with a reset a week ahead blocked the minute for 168 h, and Groq's "try again in
47h59m0s" / ``retry-after: 172000`` blocked requests-per-minute for 48 h. What a limit can mean:

* a per-minute limit (OpenRouter "minute", Groq rpm / tpm) frees by the end of the NEXT clock minute at the latest
  (the current minute, plus one for clocks that disagree); a Groq refill bucket of a minute refills within 60 s;
* a per-day limit (OpenRouter "day") resets at the next UTC midnight; a Groq day bucket refills within 86 400 s;
* a busy upstream (no window known) is taken at its word for at most ``BUSY_MAX_S``.

A value past the bound is replaced by the bound; a reset in the past, or one that cannot be read (negative, NaN,
junk), by the limit's default (the end of this minute, the next UTC midnight; a day reset at most ``SKEW_S`` ago is
clock skew around midnight and kept). Each fact then carries a ``clamped`` sentence (full UTC date and time of what
was said and what is used) that the callbacks log at WARNING and count for ``router-plugin status``. Pure: no I/O,
no LiteLLM.
"""

from __future__ import annotations

import math
import time

from ._common import end_of_minute, next_utc_midnight

#: Longest wait believed from a busy upstream (a 429 that names no limit of ours).
BUSY_MAX_S = 120.0
#: A reset this little in the past is clock skew, not nonsense: the limit is about to free.
SKEW_S = 120.0
#: Groq's buckets refill over these windows (providers.md §2.1).
GROQ_WINDOW_S = {"rpm": 60.0, "tpm": 60.0, "rpd": 86_400.0, "tpd": 86_400.0}
_NAMES = {"minute": "the minute", "day": "the day", "rpm": "requests per minute", "tpm": "tokens per minute",
          "rpd": "requests per day", "tpd": "tokens per day"}


def utc(ts: float) -> str:
    """``2026-12-14 21:04:00 UTC`` (whole seconds); a time no calendar holds -> its number."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return f"{ts:g} (epoch s)"


def span(seconds: float) -> str:
    """A rough human length: ``7 days``, ``47.9 h``, ``10 min``, ``45 s``."""
    s = abs(seconds)
    if not math.isfinite(s):
        return "forever"
    if s >= 2 * 86_400:
        return f"{s / 86_400:.0f} days"
    if s >= 2 * 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


def is_minute(limit: str) -> bool:
    return limit in ("minute", "rpm", "tpm")


def openrouter_until(limit: str, stated: float | None, raw: str | None, now: float, default: float | None,
                     *, model_only: bool = False) -> tuple[float, str]:
    """Bound an OpenRouter reset (absolute epoch seconds ``stated``, read from the wire value ``raw``).

    Returns ``(until, clamped)``: ``clamped`` is "" when the value is used as given (or none was sent).
    """
    what = _NAMES.get(limit, limit) + (" of this model" if model_only else "")
    if is_minute(limit):
        bound, kind = end_of_minute(now) + 60.0, "a per-minute limit resets by"
    else:
        bound, kind = next_utc_midnight(now), "a per-day limit resets at UTC midnight,"
    if stated is None or not math.isfinite(stated):
        if raw is None or default is None:  # nothing sent, or nothing used instead (calibration): nothing clamped
            return default, ""
        return default, (f"OpenRouter said {what} resets at {raw[:40]!r} (unreadable); "
                         f"using {utc(default)}")
    if stated > bound + 0.5:
        return bound, (f"OpenRouter said {what} resets at {utc(stated)} ({span(stated - now)}); "
                       f"{kind} {utc(bound)}: using that")
    if stated < now - SKEW_S or (stated <= now and is_minute(limit)):
        # past: a minute that 429'd frees at the end of this minute at the earliest; a day reset up to SKEW_S ago is
        # a UTC midnight seen from a clock a little behind (the day has just reset): used as given
        if default is None:
            return None, ""
        return default, (f"OpenRouter said {what} resets at {utc(stated)} ({span(now - stated)} ago); "
                         f"using {utc(default)}")
    return stated, ""


def groq_wait(limit: str, stated: float | None, said: str, now: float) -> tuple[float | None, str]:
    """Bound a wait Groq stated for ``limit`` (seconds; ``said`` how it put it, for the log).

    Returns ``(wait, clamped)``; a wait longer than the bucket's whole window becomes the window.
    """
    window = GROQ_WINDOW_S.get(limit, 60.0)
    if stated is None or not math.isfinite(stated) or stated < 0:
        return None, ""
    if stated > window + 0.5:
        return window, (f"Groq said {_NAMES.get(limit, limit)} frees in {said[:40]} ({span(stated)}, at "
                        f"{utc(now + stated)}); a {limit} bucket refills within {window:.0f} s, by "
                        f"{utc(now + window)}: using that")
    return stated, ""


def busy_wait(stated: float | None, who: str, now: float) -> tuple[float | None, str]:
    """Bound a ``retry-after`` of a busy upstream / failing server to ``BUSY_MAX_S``."""
    if stated is None or not math.isfinite(stated) or stated < 0:
        return None, ""
    if stated > BUSY_MAX_S + 0.5:
        return BUSY_MAX_S, (f"{who} said retry after {span(stated)} (at {utc(now + stated)}); a busy model is "
                            f"retried within {BUSY_MAX_S:.0f} s, at {utc(now + BUSY_MAX_S)}: using that")
    return stated, ""


__all__ = ["BUSY_MAX_S", "GROQ_WINDOW_S", "busy_wait", "groq_wait", "openrouter_until", "span", "utc"]
