"""Go ``time.Duration`` strings, as Groq writes them in ``x-ratelimit-reset-*`` headers and in 429 bodies.

Mirrors providers.md §2.2: "7.66s", "2m59.56s", "16.239999999s", "1m0.363142857s", "820ms".
:func:`go_duration` is a port of Go's ``Duration.String``; :func:`parse_go_duration` reads it back.
"""

from __future__ import annotations

import re

__all__ = ["go_duration", "parse_go_duration"]

_NS_PER = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
           "m": 60_000_000_000, "h": 3_600_000_000_000}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def _frac(v: int, prec: int) -> tuple[str, int]:
    """Go's fmtFrac: the fraction of ``v / 10**prec`` without trailing zeros (and no dot when zero)."""
    scale = 10**prec
    digits = str(v % scale).rjust(prec, "0").rstrip("0")
    return ("." + digits if digits else ""), v // scale


def go_duration(seconds: float) -> str:
    """Format ``seconds`` like Go's ``time.Duration.String()`` (rounded to whole nanoseconds).

    >>> go_duration(7.66), go_duration(179.56), go_duration(3723.5), go_duration(0.82), go_duration(0)
    ('7.66s', '2m59.56s', '1h2m3.5s', '820ms', '0s')
    """
    ns = round(seconds * 1_000_000_000)
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u == 0:
        return "0s"
    if u < 1_000_000_000:
        if u < 1_000:
            unit, prec = "ns", 0
        elif u < 1_000_000:
            unit, prec = "µs", 3
        else:
            unit, prec = "ms", 6
        frac, whole = _frac(u, prec)
        return f"{sign}{whole}{frac}{unit}"
    frac, secs = _frac(u, 9)
    out = f"{secs % 60}{frac}s"
    minutes = secs // 60
    if minutes:
        out = f"{minutes % 60}m{out}"
        hours = minutes // 60
        if hours:
            out = f"{hours}h{out}"
    return sign + out


def parse_go_duration(text: str) -> float:
    """Parse a Go duration string ("2m59.56s", "820ms", "1h0m0s", "-1.5s") back to seconds."""
    s = text.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    s = s.lstrip("+-")
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _NS_PER[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"not a Go duration: {text!r}")
    return sign * total / 1_000_000_000
