"""The simulator's switches: schema check and merge for ``POST /_sim/config``.

Changing a model's ``groq.limits`` starts that model's buckets afresh. A patch is deep-merged into the current switches; ``null`` deletes a key (back to its default). A patch with
an unknown key or a wrong type is refused as a whole (:class:`ConfigError`), so a typo never passes silently.
Schema (all optional)::

    {"openrouter": {"accounts": {"<api key>" | "*": {"daily_limit": int, "minute_limit": int, "funded": bool,
                                                      "balance_negative": bool, "used_today": int}},
                    "keys": {"<api key>": "<account name>"}},
     "groq": {"limits": {"<model id>": {"rpm": int, "rpd": int, "tpm": int, "tpd": int}}},
     "models": {"<model id>": {"gone": bool, "busy": bool, "status": int, "status_count": int, "latency_ms": num,
                               "error_200": bool | int,
                               "stream_fault": "cut|stall|stall_first|slow_first|truncate|error_chunk|malformed|
                                               malformed_list|no_done",
                               "stall_s": num, "reject_prefill": bool}},
     "latency_ms": num}
"""

from __future__ import annotations

import copy
from typing import Any, Callable

__all__ = ["ConfigError", "validate_patch", "merge", "STREAM_FAULTS"]

STREAM_FAULTS = ("cut", "stall", "stall_first", "slow_first", "truncate", "error_chunk", "malformed", "malformed_list",
                 "no_done")


class ConfigError(ValueError):
    """A ``/_sim/config`` patch that does not match the schema; the message names the key."""


Validator = Callable[[Any, str], None]


def _int(lo: int, hi: int | None = None) -> Validator:
    def check(v: Any, path: str) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise ConfigError(f"{path}: expected an integer in [{lo}, {hi if hi is not None else '...'}], got {v!r}")
    return check


def _num(lo: float) -> Validator:
    def check(v: Any, path: str) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo:
            raise ConfigError(f"{path}: expected a number >= {lo}, got {v!r}")
    return check


def _bool(v: Any, path: str) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{path}: expected true/false, got {v!r}")


def _bool_or_status(v: Any, path: str) -> None:
    if not isinstance(v, bool):
        _int(400, 599)(v, path)


def _name(v: Any, path: str) -> None:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{path}: expected an account name (a non-empty string), got {v!r}")


def _fault(v: Any, path: str) -> None:
    if v not in STREAM_FAULTS:
        raise ConfigError(f"{path}: expected one of {', '.join(STREAM_FAULTS)}, got {v!r}")


class _MapOf:
    """Any string key, each value checked against ``schema``."""

    def __init__(self, schema: dict) -> None:
        self.schema = schema


_ACCOUNT = {"daily_limit": _int(0), "minute_limit": _int(0), "funded": _bool, "balance_negative": _bool,
            "used_today": _int(0)}
_GROQ_LIMITS = {"rpm": _int(1), "rpd": _int(1), "tpm": _int(1), "tpd": _int(1)}
_MODEL = {"gone": _bool, "busy": _bool, "status": _int(400, 599), "status_count": _int(0), "latency_ms": _num(0),
          "error_200": _bool_or_status, "stream_fault": _fault, "stall_s": _num(0), "reject_prefill": _bool}
SCHEMA: dict = {"openrouter": {"accounts": _MapOf(_ACCOUNT), "keys": _MapOf(_name)}, "groq": {"limits": _MapOf(_GROQ_LIMITS)},
                "models": _MapOf(_MODEL), "latency_ms": _num(0)}


def validate_patch(patch: Any, schema: Any = SCHEMA, path: str = "config") -> None:
    """Raise :class:`ConfigError` unless ``patch`` fits ``schema`` (``None`` is allowed anywhere: delete)."""
    if patch is None:
        return
    if isinstance(schema, (dict, _MapOf)):
        if not isinstance(patch, dict):
            raise ConfigError(f"{path}: expected an object, got {type(patch).__name__}")
        for key, value in patch.items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f"{path}: keys must be non-empty strings")
            if isinstance(schema, _MapOf):
                where = 'key' if path.endswith(('accounts', 'keys')) else 'id'
                validate_patch(value, schema.schema, f"{path}.<{where}>")
            elif key not in schema:
                raise ConfigError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(schema))})")
            else:
                validate_patch(value, schema[key], f"{path}.{key}")
        return
    schema(patch, path)


def merge(base: dict, patch: dict) -> dict:
    """Deep-merge ``patch`` into a copy of ``base``; a ``None`` value removes the key."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = merge(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out
