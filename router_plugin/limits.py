"""Which counters a deployment draws on, and their windows. Pure data and arithmetic: no I/O.

Sources: ../shared/docs/providers.md (§1.1 OpenRouter free tier, §2.1 Groq free plan).

* ``openrouter/<id>:free`` -> the ACCOUNT pool of its API key: requests per clock minute (20) and per UTC day
  (50, or 1000 once the account has bought 10 credits). Every ``:free`` model of the key shares it.
* ``groq/<model>`` -> that model's own requests/min, requests/day, tokens/min, tokens/day for the key's
  organisation, refilling continuously (Groq's token bucket, providers.md §2.2).
* anything else (paid) -> no counters; only chosen when ``allow_paid: true``.

All the counters of one deployment share one Redis hash slot (``slot``), so one Lua call reserves them all.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["fixed", "refill"]
Unit = Literal["requests", "tokens"]

MINUTE_S = 60
DAY_S = 86_400


@dataclass(frozen=True)
class Limit:
    """One limit: ``capacity`` units per ``window_s``; ``fixed`` windows align to the clock, ``refill`` drains."""

    name: str  # "minute" | "day" (OpenRouter account) | "rpm" | "rpd" | "tpm" | "tpd"
    capacity: int
    window_s: int
    kind: Kind
    unit: Unit

    @property
    def window_ms(self) -> int:
        return self.window_s * 1000


@dataclass(frozen=True)
class Counter:
    """A limit as stored: ``key`` is the Redis key suffix inside the deployment's hash slot."""

    key: str
    limit: Limit
    label: str  # what a human is told, e.g. "OpenRouter free requests/day (account 3fa9c1d2)"


@dataclass(frozen=True)
class DeploymentPlan:
    """Everything the strategy and the store need to know about one deployment, derived once."""

    deployment_id: str
    model_name: str  # the LiteLLM model group
    model: str  # litellm_params.model, e.g. "openrouter/deepseek/deepseek-r1:free"
    provider: str | None  # "openrouter" | "groq" | None (other / paid)
    slot: str  # hash tag: "or:<keyhash>" or "gq:<keyhash>:<model>"; "" when unmetered
    pool_label: str  # "OpenRouter free pool (account 3fa9c1d2)" / "groq/openai/gpt-oss-120b"
    counters: tuple[Counter, ...] = ()
    context_window: int | None = None
    free: bool = True

    @property
    def metered(self) -> bool:
        return bool(self.counters)

    @property
    def token_counters(self) -> tuple[Counter, ...]:
        return tuple(c for c in self.counters if c.limit.unit == "tokens")


# Groq free plan, per model per organisation (providers.md §2.1, console.groq.com/docs/rate-limits, Aug 2026).
# (rpm, rpd, tpm, tpd); tpd None = no published daily token limit. Models Groq shut down are in GROQ_RETIRED.
GROQ_FREE_LIMITS: dict[str, tuple[int, int, int, int | None]] = {
    "openai/gpt-oss-120b": (30, 1_000, 8_000, 200_000),
    "openai/gpt-oss-20b": (30, 1_000, 8_000, 200_000),
    "openai/gpt-oss-safeguard-20b": (30, 1_000, 8_000, 200_000),
    "qwen/qwen3.6-27b": (30, 1_000, 8_000, 200_000),
    "groq/compound": (30, 250, 70_000, None),
    "groq/compound-mini": (30, 250, 70_000, None),
    "allam-2-7b": (30, 7_000, 6_000, 500_000),
    # Shut down (GROQ_RETIRED) but kept: a config that still names one gets the right counters until its 404.
    "llama-3.1-8b-instant": (30, 14_400, 6_000, 500_000),
    "qwen/qwen3-32b": (60, 1_000, 6_000, 500_000),
    "meta-llama/llama-4-scout-17b-16e-instruct": (30, 1_000, 30_000, 500_000),
    "meta-llama/llama-4-maverick-17b-128e-instruct": (30, 1_000, 6_000, 500_000),
    "moonshotai/kimi-k2-instruct": (60, 1_000, 10_000, 300_000),
    "moonshotai/kimi-k2-instruct-0905": (60, 1_000, 10_000, 300_000),
}
# Used for a groq/ model that is not in the table: the most common free-plan row.
GROQ_DEFAULT_LIMITS: tuple[int, int, int, int | None] = (30, 1_000, 6_000, 200_000)

# Retired models: `router-plugin check` warns, calibration quarantines them when the live roster agrees, a 404
# quarantines them anyway. Sources (providers.md §2.1 update 2026-12): console.groq.com/docs/deprecations as cited
# in langchain-ai/langchain#38363, promptfoo/promptfoo#9933, gsd-build/gsd-2#4273; older: codedaily04/commit-craft#1.
GROQ_RETIRED: dict[str, str] = {
    "llama-3.3-70b-versatile": "shut down 2026-08-16; use openai/gpt-oss-120b",
    "llama-3.1-8b-instant": "shut down 2026-08-16; use openai/gpt-oss-20b",
    "qwen/qwen3-32b": "shut down 2026-07-17; use qwen/qwen3.6-27b",
    "meta-llama/llama-4-scout-17b-16e-instruct": "shut down 2026-07-17; use openai/gpt-oss-120b",
    "meta-llama/llama-4-maverick-17b-128e-instruct": "shut down 2026-03-09; use openai/gpt-oss-120b",
    "moonshotai/kimi-k2-instruct": "shut down 2025-10-10; use openai/gpt-oss-120b",
    "moonshotai/kimi-k2-instruct-0905": "shut down 2026-04-15; use openai/gpt-oss-120b",
    "deepseek-r1-distill-llama-70b": "retired; use openai/gpt-oss-120b",
}
# OpenRouter :free models that answer 404 "No endpoints found" (providers.md §1.8 update 2026-12: anomalyco/models.dev
# roster history, snapshot 2026-07-02, removals cited in its issues #1248/#1249; older 404 captures OpenHands#11874,
# chatboxai/chatbox#2743). id -> when it left.
OPENROUTER_RETIRED: dict[str, str] = {
    "deepseek/deepseek-r1:free": "removed 2026-03-22",
    "deepseek/deepseek-r1-0528:free": "removed 2026-03-22",
    "google/gemini-2.0-flash-exp:free": "removed 2026-03-22",
    "arcee-ai/trinity-large-preview:free": "removed 2026-05-15",
    "google/gemma-3-27b-it:free": "removed 2026-05-15",
    "deepseek/deepseek-v4-flash:free": "removed 2026-05-31",
    "z-ai/glm-4.5-air:free": "removed 2026-06-09",
    "x-ai/grok-4-fast:free": "404 No endpoints found",
    "deepseek/deepseek-chat-v3.1:free": "404 No endpoints found",
    "stepfun/step-3.5-flash:free": "404 No endpoints found",
    "openrouter/hunter-alpha:free": "404 No endpoints found",
}
OPENROUTER_RETIRED_FREE: frozenset[str] = frozenset(OPENROUTER_RETIRED)


def retired(model: str) -> str | None:
    """Why the built-in tables know ``model`` (a LiteLLM model string) as retired, else None. Rosters move
    monthly: the live roster (calibration.py, ``router-plugin models``) is the truth; this is the offline hint."""
    provider, bare = provider_of(model), _bare(model)
    if provider == "groq":
        return GROQ_RETIRED.get(bare)
    if provider == "openrouter":
        return OPENROUTER_RETIRED.get(bare)
    return None


# OpenRouter free tier (providers.md §1.1): same minute limit for both tiers; the day is the lever.
OPENROUTER_FREE_RPM = 20
OPENROUTER_FREE_RPD = {"free": 50, "funded": 1_000}

# Context windows (tokens) as the live rosters list them (providers.md §1.8 and §2.1 updates 2026-12, §2.4). The
# live GET /models value replaces these at run time (calibration.py); a config's limits.<model>.context wins.
CONTEXT_WINDOWS: dict[str, int] = {
    "openrouter/free": 200_000,
    "meta-llama/llama-3.3-70b-instruct:free": 65_536,  # models.dev snapshot 2026-07-02 (was 131,072)
    "qwen/qwen3-coder:free": 262_000,  # back on 2026-05-15 at 262,000
    "google/gemma-4-31b-it:free": 131_072,
    "openai/gpt-oss-120b:free": 131_072,
    "openai/gpt-oss-20b:free": 131_072,
    # retired on OpenRouter (OPENROUTER_RETIRED), kept for configs that still name them
    "deepseek/deepseek-r1:free": 163_840,
    "deepseek/deepseek-r1-0528:free": 163_840,
    "google/gemini-2.0-flash-exp:free": 1_048_576,
    "deepseek/deepseek-v4-flash:free": 1_048_576,
    "google/gemma-3-27b-it:free": 131_072,
    "arcee-ai/trinity-large-preview:free": 131_000,
    "z-ai/glm-4.5-air:free": 131_072,
    # Groq (GET /openai/v1/models context_window)
    "openai/gpt-oss-120b": 131_072,
    "openai/gpt-oss-20b": 131_072,
    "openai/gpt-oss-safeguard-20b": 131_072,
    "qwen/qwen3.6-27b": 131_072,
    "allam-2-7b": 4_096,
    "groq/compound": 131_072,
    "groq/compound-mini": 131_072,
    "llama-3.1-8b-instant": 131_072,
    "qwen/qwen3-32b": 131_072,
    "meta-llama/llama-4-scout-17b-16e-instruct": 131_072,
    "moonshotai/kimi-k2-instruct": 131_072,
}

LIMIT_FIELDS = ("rpm", "rpd", "tpm", "tpd")


@dataclass(frozen=True)
class LimitOverride:
    """``router_plugin.limits.<model or "openrouter">``: any field left None keeps the built-in value."""

    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    tpd: int | None = None
    context: int | None = None


@dataclass(frozen=True)
class PlanInputs:
    """The parts of the plugin settings that decide a plan (kept small so this module needs no config import)."""

    openrouter_tier: str = "free"
    allow_paid: bool = False
    limits: Mapping[str, LimitOverride] = field(default_factory=dict)
    # Learnt / derived (see openrouter_accounts() and calibration.py): key fingerprint -> account id, account id ->
    # requests/day the key endpoint reported, LiteLLM model string -> context window the live roster lists.
    openrouter_accounts: Mapping[str, str] = field(default_factory=dict)
    openrouter_rpd: Mapping[str, int] = field(default_factory=dict)
    live_context: Mapping[str, int] = field(default_factory=dict)


def key_fingerprint(api_key: str | None) -> str:
    """A short, one-way name for an API key: the key itself never reaches Redis, logs or errors."""
    if not api_key:
        return "nokey"
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def provider_of(model: str) -> str | None:
    head = model.split("/", 1)[0]
    return head if head in ("openrouter", "groq") else None


def is_openrouter_free(model: str) -> bool:
    """``:free`` variants and the ``openrouter/free`` router are served by the free tier."""
    bare = model.split("/", 1)[1] if model.startswith("openrouter/") else model
    return bare.endswith(":free") or bare == "openrouter/free"


def _bare(model: str) -> str:
    return model.split("/", 1)[1] if "/" in model else model


def plan_for(deployment: Mapping[str, Any], inputs: PlanInputs) -> DeploymentPlan:
    """Derive the counters of one ``model_list`` entry (with LiteLLM's ``model_info.id``)."""
    params = deployment.get("litellm_params") or {}
    model = str(params.get("model", ""))
    deployment_id = str((deployment.get("model_info") or {}).get("id") or model)
    model_name = str(deployment.get("model_name", model))
    api_key = params.get("api_key")
    fp = key_fingerprint(api_key if isinstance(api_key, str) else None)
    provider = provider_of(model)
    bare = _bare(model)
    override = inputs.limits.get(model) or inputs.limits.get(bare) or LimitOverride()
    context = override.context or inputs.live_context.get(model) or CONTEXT_WINDOWS.get(bare)

    if provider == "openrouter" and is_openrouter_free(model):
        pool = inputs.limits.get("openrouter") or LimitOverride()
        account = inputs.openrouter_accounts.get(fp, fp)  # the pool is the ACCOUNT, not the key (providers.md §1.1)
        rpm = pool.rpm or OPENROUTER_FREE_RPM
        rpd = pool.rpd or inputs.openrouter_rpd.get(account) or OPENROUTER_FREE_RPD[inputs.openrouter_tier]
        fp = account
        who = f"account {fp[:8]}"
        counters = [
            Counter("minute", Limit("minute", rpm, MINUTE_S, "fixed", "requests"), f"OpenRouter free requests/min ({who})"),
            Counter("day", Limit("day", rpd, DAY_S, "fixed", "requests"), f"OpenRouter free requests/day ({who})"),
        ]
        # A model-level override (e.g. a :free model limited to 8/min upstream) adds counters of its own.
        counters += _override_counters(f"m:{bare}", override, f"{model}")
        return DeploymentPlan(
            deployment_id, model_name, model, "openrouter", f"or:{fp}", f"OpenRouter free pool ({who})",
            tuple(counters), context, True,
        )

    if provider == "groq":
        rpm, rpd, tpm, tpd = GROQ_FREE_LIMITS.get(bare, GROQ_DEFAULT_LIMITS)
        values = {
            "rpm": override.rpm or rpm,
            "rpd": override.rpd or rpd,
            "tpm": override.tpm or tpm,
            "tpd": override.tpd or tpd,
        }
        counters = tuple(
            Counter(name, _limit(name, value), f"{model} {_HUMAN[name]}")
            for name, value in values.items()
            if value
        )
        return DeploymentPlan(deployment_id, model_name, model, "groq", f"gq:{fp}:{bare}", model, counters, context, True)

    # Paid / other providers: unmetered unless the user gave limits for the model.
    counters = tuple(_override_counters("m", override, model))
    return DeploymentPlan(
        deployment_id, model_name, model, provider, f"px:{fp}:{bare}" if counters else "", model, counters, context, False
    )


_HUMAN = {"rpm": "requests/min", "rpd": "requests/day", "tpm": "tokens/min", "tpd": "tokens/day"}


def _limit(name: str, capacity: int) -> Limit:
    window = MINUTE_S if name in ("rpm", "tpm") else DAY_S
    unit: Unit = "requests" if name in ("rpm", "rpd") else "tokens"
    return Limit(name, capacity, window, "refill", unit)


def _override_counters(prefix: str, override: LimitOverride, label: str) -> list[Counter]:
    return [
        Counter(f"{prefix}:{name}", _limit(name, value), f"{label} {_HUMAN[name]}")
        for name in LIMIT_FIELDS
        if (value := getattr(override, name))
    ]


def openrouter_accounts(keys: Sequence[tuple[str, str | None]], creators: Mapping[str, str] | None = None
                        ) -> dict[str, str]:
    """Which OpenRouter account pool each key fingerprint draws on: ``{fingerprint: account id}``.

    ``keys``: (key fingerprint, account name the config gives it or None) of every OpenRouter deployment;
    ``creators``: fingerprint -> ``creator_user_id`` that ``GET /api/v1/key`` reported. OpenRouter's limits are per
    account ("Making additional accounts or API keys will not affect your rate limits", providers.md §1.1), so:
    keys the config names (``model_info.openrouter_account``) are grouped by that name; the other keys are ONE
    account unless the key endpoint reported different creators, then one account per creator (keys it did not
    report join the largest). An id is a hash of the member fingerprints (one key alone: its own fingerprint, the
    pre-grouping id), the same in every process of the config; never a key.
    """
    creators = creators or {}
    named: dict[str, set[str]] = {}
    unnamed: set[str] = set()
    for fp, name in keys:
        if name:
            named.setdefault(name, set()).add(fp)
        else:
            unnamed.add(fp)
    groups: list[tuple[str, set[str]]] = [("name:" + n, fps) for n, fps in sorted(named.items())]
    by_creator: dict[str, set[str]] = {}
    for fp in unnamed:
        if fp in creators:
            by_creator.setdefault(creators[fp], set()).add(fp)
    unknown = unnamed - {fp for fps in by_creator.values() for fp in fps}
    if len(by_creator) <= 1:
        if unnamed:
            groups.append(("", unnamed))
    else:
        parts = sorted(by_creator.values(), key=lambda fps: (-len(fps), sorted(fps)))
        parts[0] |= unknown
        groups += [("", fps) for fps in parts]
    out: dict[str, str] = {}
    for label, fps in groups:
        ident = next(iter(fps)) if len(fps) == 1 and not label else key_fingerprint(label + "|" + ",".join(sorted(fps)))
        for fp in fps:
            out.setdefault(fp, ident)
    return out


# ---- request size ---------------------------------------------------------------------------------------

CHARS_PER_TOKEN = 3  # deliberately low: an over-estimate is settled after the call, an under-estimate is a 429
PER_MESSAGE_TOKENS = 4


def estimate_prompt_tokens(messages: Sequence[Any] | None, request: Mapping[str, Any] | None = None) -> int:
    """A fast, conservative prompt size (no tokenizer: the routing decision must stay well under a millisecond).

    With ``request`` (the call's keyword arguments), what the provider also counts as prompt is added: the tool
    / function definitions and a ``response_format`` schema, as JSON text at ``SCHEMA_CHARS_PER_TOKEN``.
    """
    tokens = 0
    if messages and isinstance(messages, Sequence) and not isinstance(messages, (str, bytes)):
        chars = 0
        for message in messages:
            content = message.get("content") if isinstance(message, Mapping) else message
            chars += _content_chars(content)
            if isinstance(message, Mapping) and message.get("tool_calls"):
                chars += len(str(message["tool_calls"]))
        tokens = math.ceil(chars / CHARS_PER_TOKEN) + PER_MESSAGE_TOKENS * len(messages)
    elif messages:
        tokens = math.ceil(_content_chars(messages) / CHARS_PER_TOKEN) + PER_MESSAGE_TOKENS
    if request:
        tokens += schema_tokens(request)
    return tokens


SCHEMA_CHARS_PER_TOKEN = 4  # JSON schema text tokenises denser than prose; still an over-estimate in practice
SCHEMA_FIELDS = ("tools", "functions", "response_format")


def schema_tokens(request: Mapping[str, Any]) -> int:
    """Prompt tokens of the request's tool / function definitions and ``response_format`` (its JSON schema)."""
    chars = 0
    for name in SCHEMA_FIELDS:
        value = request.get(name)
        if value is None or value is False:
            continue
        chars += _json_chars(value)
    return math.ceil(chars / SCHEMA_CHARS_PER_TOKEN)


def _json_chars(value: Any) -> int:
    if isinstance(value, type):  # a pydantic model class as response_format: its schema is what is sent
        schema = getattr(value, "model_json_schema", None)
        try:
            value = schema() if callable(schema) else value.__name__
        except Exception:
            value = value.__name__
    try:
        return len(json.dumps(value, separators=(",", ":"), default=str))
    except Exception:
        return len(str(value))


def _content_chars(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if isinstance(content, Sequence):  # OpenAI content parts
        return sum(len(str(part.get("text", ""))) if isinstance(part, Mapping) else len(str(part)) for part in content)
    return len(str(content))


def requested_max_tokens(request: Mapping[str, Any], default: int) -> int:
    """Completion tokens the request may use: ``max_tokens`` / ``max_completion_tokens`` of the request, else
    ``default``, times ``n`` (each of the ``n`` choices may be that long; the provider counts them all)."""
    tokens = default
    for name in ("max_tokens", "max_completion_tokens"):
        value = request.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            tokens = value
            break
    n = request.get("n")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        tokens *= n
    return tokens
