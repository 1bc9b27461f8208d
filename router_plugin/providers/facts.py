"""Typed facts that the provider parsers derive from a reply (status, headers, body).

Parsers never raise: whatever they cannot read becomes ``Unknown``. The callbacks turn facts into
store actions (block a pool, cool or quarantine one model, calibrate a counter).

Times are absolute epoch seconds (float) so every worker agrees on them. A reset or wait a provider stated is
bounded by what its limit can mean (``bounds.py``); ``clamped`` then says what was said and what is used instead
(one line, full UTC dates), "" when the value was used as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

#: Which counter a fact talks about.
#:   OpenRouter account pool: "minute" (clock minute), "day" (UTC day)
#:   Groq per-model limits:   "rpm", "rpd", "tpm", "tpd"
LimitName = Literal["minute", "day", "rpm", "rpd", "tpm", "tpd"]


@dataclass(frozen=True)
class Exhausted:
    """A whole limit is used up until ``until``.

    OpenRouter platform 429s (free-models-per-min / -per-day) exhaust the *account* pool, which every
    ``:free`` model of that key shares. Groq 429s exhaust one limit of one model.
    OpenRouter's per-model shared-capacity 429 ("limit_rpm/<model>/...") exhausts only that model:
    ``model_only`` is then True.
    """

    limit: LimitName
    until: float
    detail: str
    capacity: int | None = None
    model_only: bool = False
    clamped: str = ""


@dataclass(frozen=True)
class ModelBusy:
    """The upstream provider behind one model is rate-limited ("Provider returned error" 429).

    Only that model should cool down, briefly; the account pool is untouched.
    """

    detail: str
    retry_after: float | None = None
    clamped: str = ""


@dataclass(frozen=True)
class ModelGone:
    """404 "No endpoints found for X:free", Groq ``model_not_found`` / ``model_decommissioned``."""

    detail: str


@dataclass(frozen=True)
class CreditsExhausted:
    """OpenRouter 402: the account balance is negative; even ``:free`` models refuse."""

    detail: str


@dataclass(frozen=True)
class ServerError:
    """5xx, 408, 524, 529, timeouts: the deployment is unwell; a short cooldown is right."""

    status: int | None
    detail: str
    retry_after: float | None = None
    clamped: str = ""


@dataclass(frozen=True)
class ContextTooLong:
    """400 context_length_exceeded: never retry the same model with the same request."""

    detail: str


@dataclass(frozen=True)
class RequestTooLarge:
    """Groq 413 (older: 429) when one request alone exceeds the model's tokens-per-minute."""

    detail: str
    limit: int | None = None


@dataclass(frozen=True)
class Rejected:
    """Any other client error: 400 invalid request / content policy, 401, 403, 422."""

    status: int | None
    detail: str


@dataclass(frozen=True)
class Unknown:
    """Nothing recognisable; treated like a server error by the callbacks."""

    detail: str


Fact = Union[
    Exhausted, ModelBusy, ModelGone, CreditsExhausted, ServerError, ContextTooLong, RequestTooLarge, Rejected, Unknown
]


@dataclass(frozen=True)
class Remaining:
    """What a provider says is left of one limit (calibration).

    Groq sends these on every reply: ``-requests`` headers describe the DAY, ``-tokens`` the MINUTE.
    OpenRouter sends them only on 429s (``X-RateLimit-*``, also mirrored in ``error.metadata.headers``).
    """

    limit: LimitName
    remaining: int
    capacity: int | None = None
    reset_at: float | None = None
    clamped: str = ""
