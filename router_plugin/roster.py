"""The live free roster and the OpenRouter tier, from the providers' free endpoints (never a completion).

* OpenRouter ``GET /api/v1/models`` (public): free = id ends ``:free`` or prompt and completion price are zero
  (providers.md §1.5);
* Groq ``GET /openai/v1/models`` (needs a key): every active model, with ``context_window`` (§2.4);
* OpenRouter ``GET /api/v1/key``: ``is_free_tier`` and ``free_model_daily_requests {used, limit, remaining}``
  (§1.4) — the day count of the whole account, which :func:`day_fact` turns into a calibration of the shared
  ``day`` counter.

Used by ``router-plugin models`` / ``router-plugin key`` and by the background calibrator. Base URLs come from
the deployments' ``api_base`` (so tests and the demo point at the simulator), else the real services. API keys
travel only in the ``Authorization`` header; nothing here puts a key in a message, a log line or Redis.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._plans import effective_api_key
from .config import ENV_PREFIX
from .limits import DAY_S, OPENROUTER_FREE_RPD, is_openrouter_free, key_fingerprint, provider_of
from .providers.facts import Remaining

DEFAULT_BASES = {"openrouter": "https://openrouter.ai/api/v1", "groq": "https://api.groq.com/openai/v1"}
PROVIDERS = ("openrouter", "groq")
OPENROUTER_PAGE = 500  # GET /models default page size (max 1000)


def bare_id(model: str) -> str:
    """``openrouter/deepseek/deepseek-r1:free`` -> ``deepseek/deepseek-r1:free``;
    ``groq/groq/compound`` -> ``groq/compound``."""
    return model.split("/", 1)[1] if "/" in model else model


def _resolve(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        return os.environ.get(value[len(ENV_PREFIX):])
    return value


# ---- what the config points at --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Configured:
    """One deployment of the config: where it is in ``model_list`` and what it names."""

    index: int
    group: str
    model: str
    provider: str | None

    @property
    def key(self) -> str:
        return f"model_list[{self.index}]"

    @property
    def bare(self) -> str:
        return bare_id(self.model)


@dataclass(frozen=True)
class Endpoint:
    """A provider API one or more deployments talk to: a base URL and an account (its key)."""

    provider: str
    base_url: str
    api_key: str | None = field(repr=False)
    deployments: tuple[Configured, ...] = ()

    @property
    def account(self) -> str:
        """The key's fingerprint as the pools name it (``account 3fa9c1d2``); never the key."""
        return key_fingerprint(self.api_key)[:8] if self.api_key else "no key"


def provider_of_deployment(deployment: Mapping[str, Any]) -> str | None:
    return provider_of(str((deployment.get("litellm_params") or {}).get("model", "")))


def configured(model_list: Sequence[Mapping[str, Any]]) -> list[Configured]:
    out = []
    for i, d in enumerate(model_list):
        model = str((d.get("litellm_params") or {}).get("model", ""))
        out.append(Configured(i, str(d.get("model_name", model)), model, provider_of(model)))
    return out


def endpoints(model_list: Sequence[Mapping[str, Any]] | None, provider: str) -> list[Endpoint]:
    """Distinct (base URL, key) of the config's deployments of ``provider``; without a config, the default
    base URL and the provider's usual environment variable."""
    found: dict[tuple[str, str | None], list[Configured]] = {}
    for entry, deployment in zip(configured(model_list or []), model_list or []):
        if entry.provider != provider:
            continue
        params = deployment.get("litellm_params") or {}
        base = str(_resolve(params.get("api_base")) or DEFAULT_BASES[provider]).rstrip("/")
        found.setdefault((base, effective_api_key(params)), []).append(entry)
    if not found and not model_list:
        key = effective_api_key({"model": f"{provider}/x"})
        found[(DEFAULT_BASES[provider], key)] = []
    return [Endpoint(provider, base, key, tuple(entries)) for (base, key), entries in found.items()]


# ---- rosters --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RosterModel:
    provider: str
    id: str
    context: int | None
    max_completion: int | None
    free: bool

    @property
    def model(self) -> str:
        """The LiteLLM model string a deployment would use."""
        return f"{self.provider}/{self.id}"


@dataclass
class Roster:
    provider: str
    base_url: str
    models: dict[str, RosterModel] = field(default_factory=dict)  # id -> model (free ones for OpenRouter)
    all_ids: set[str] = field(default_factory=set)  # every id the provider listed (paid ones too)
    error: str | None = None
    fetched_at: float = 0.0

    @property
    def usable(self) -> bool:
        """Only a roster that answered with models may declare a configured model gone."""
        return self.error is None and bool(self.all_ids)

    def has(self, bare: str) -> bool:
        return bare in self.all_ids


def _zero(price: Any) -> bool:
    try:
        return float(price) == 0.0
    except (TypeError, ValueError):
        return False


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _describe_http_error(what: str, exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        body = exc.response.text[:200].replace("\n", " ")
        return f"{what} answered HTTP {exc.response.status_code}: {body}"
    return f"{what} failed: {type(exc).__name__}: {exc}"


async def fetch_openrouter_models(client: httpx.AsyncClient, base_url: str) -> Roster:
    roster = Roster("openrouter", base_url, fetched_at=time.time())
    url = f"{base_url}/models"
    try:
        for page in range(10):
            params = {"offset": page * OPENROUTER_PAGE} if page else None
            response = await client.get(url, params=params)
            response.raise_for_status()
            data = response.json().get("data")
            if not isinstance(data, list):
                raise ValueError("no 'data' list in the reply")
            new = 0
            for item in data:
                if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
                    continue
                model_id = item["id"]
                if model_id in roster.all_ids:
                    continue
                new += 1
                roster.all_ids.add(model_id)
                pricing = item.get("pricing") or {}
                free = model_id.endswith(":free") or (_zero(pricing.get("prompt")) and _zero(pricing.get("completion")))
                if not free:
                    continue
                top = item.get("top_provider") or {}
                roster.models[model_id] = RosterModel(
                    "openrouter", model_id, _int(item.get("context_length")) or _int(top.get("context_length")),
                    _int(top.get("max_completion_tokens")), True)
            if len(data) < OPENROUTER_PAGE or new == 0:
                break
    except (httpx.HTTPError, ValueError) as exc:
        roster.error = _describe_http_error(f"GET {url}", exc)
    return roster


async def fetch_groq_models(client: httpx.AsyncClient, base_url: str, api_key: str | None) -> Roster:
    roster = Roster("groq", base_url, fetched_at=time.time())
    url = f"{base_url}/models"
    if not api_key:
        roster.error = f"GET {url} needs a Groq API key: export GROQ_API_KEY=... (or pass --config)"
        return roster
    try:
        response = await client.get(url, headers={"Authorization": f"Bearer {api_key}"})
        response.raise_for_status()
        data = response.json().get("data")
        if not isinstance(data, list):
            raise ValueError("no 'data' list in the reply")
        for item in data:
            if not isinstance(item, Mapping) or not isinstance(item.get("id"), str) or item.get("active") is False:
                continue
            roster.all_ids.add(item["id"])
            roster.models[item["id"]] = RosterModel(
                "groq", item["id"], _int(item.get("context_window")), _int(item.get("max_completion_tokens")), True)
    except (httpx.HTTPError, ValueError) as exc:
        roster.error = _describe_http_error(f"GET {url}", exc)
    return roster


async def fetch_rosters(model_list: Sequence[Mapping[str, Any]] | None, providers: Iterable[str] = PROVIDERS,
                        timeout_s: float = 10.0) -> list[Roster]:
    """One roster per distinct endpoint of each provider (usually one each)."""
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True) as client:
        jobs = []
        for provider in providers:
            seen: set[str] = set()
            for ep in endpoints(model_list, provider):
                if provider == "openrouter":
                    if ep.base_url in seen:  # public: one fetch per base URL whatever the key
                        continue
                    seen.add(ep.base_url)
                    jobs.append(fetch_openrouter_models(client, ep.base_url))
                else:
                    jobs.append(fetch_groq_models(client, ep.base_url, ep.api_key))
        return list(await asyncio.gather(*jobs))


def gone_deployments(model_list: Sequence[Mapping[str, Any]], rosters: Sequence[Roster]) -> list[Configured]:
    """Configured deployments that a usable roster of their provider no longer lists."""
    by_provider: dict[str, list[Roster]] = {}
    for roster in rosters:
        by_provider.setdefault(roster.provider, []).append(roster)
    gone = []
    for entry, deployment in zip(configured(model_list), model_list):
        rosters_of = [r for r in by_provider.get(entry.provider or "", []) if r.usable]
        if not rosters_of:
            continue
        base = str(_resolve((deployment.get("litellm_params") or {}).get("api_base"))
                   or DEFAULT_BASES.get(entry.provider or "", "")).rstrip("/")
        mine = [r for r in rosters_of if r.base_url == base] or rosters_of
        if not any(r.has(entry.bare) for r in mine):
            gone.append(entry)
    return gone


def roster_document(rosters: Sequence[Roster], model_list: Sequence[Mapping[str, Any]] | None = None) -> dict:
    """The ``--write`` file: context overrides for ``router_plugin.limits`` plus the roster itself.

    With a config, ``limits`` holds only its deployments that are in the roster (merge it into the config);
    without one, every free model listed.
    """
    listed = {m.model: m for r in rosters for m in r.models.values()}
    if model_list:
        wanted = [c.model for c in configured(model_list) if c.model in listed]
    else:
        wanted = sorted(listed)
    limits = {model: {"context": listed[model].context} for model in dict.fromkeys(wanted) if listed[model].context}
    fetched = max((r.fetched_at for r in rosters), default=time.time())
    doc: dict[str, Any] = {"router_plugin": {"limits": limits}, "roster": {
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(fetched)),
        "sources": [f"{r.base_url}/models" for r in rosters if r.error is None],
    }}
    for provider in PROVIDERS:
        models = {m.id: m.context for r in rosters if r.provider == provider for m in sorted(r.models.values(),
                                                                                            key=lambda m: m.id)}
        if models:
            doc["roster"][provider] = models
    if model_list:
        doc["roster"]["gone"] = [c.model for c in gone_deployments(model_list, rosters)]
    return doc


# ---- the OpenRouter key: tier and today's count ----------------------------------------------------------------

@dataclass(frozen=True)
class KeyInfo:
    """What ``GET /api/v1/key`` says about an account (never the key or its label, which can show part of it)."""

    is_free_tier: bool | None
    daily_limit: int | None  # free_model_daily_requests.limit
    daily_used: int | None
    daily_remaining: int | None
    fetched_at: float
    account: str | None = None  # a one-way hash of creator_user_id: which keys share an account (never the key)

    @property
    def limit(self) -> int:
        """The account's free requests per day: the reported limit, else derived from ``is_free_tier``."""
        if self.daily_limit:
            return self.daily_limit
        return OPENROUTER_FREE_RPD["free" if self.is_free_tier in (True, None) else "funded"]

    @property
    def tier(self) -> str:
        return "funded" if self.limit >= OPENROUTER_FREE_RPD["funded"] else "free"

    @property
    def reports_usage(self) -> bool:
        return self.daily_remaining is not None or (self.daily_used is not None and self.daily_limit is not None)

    @property
    def remaining(self) -> int | None:
        if self.daily_remaining is not None:
            return self.daily_remaining
        if self.daily_used is not None and self.daily_limit is not None:
            return max(0, self.daily_limit - self.daily_used)
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"is_free_tier": self.is_free_tier, "tier": self.tier, "daily_limit": self.limit,
                "daily_used": self.daily_used, "daily_remaining": self.remaining}


class KeyLookupError(Exception):
    """``GET /key`` failed; the message names the URL and the status, never the key."""


async def fetch_key(client: httpx.AsyncClient, base_url: str, api_key: str | None) -> KeyInfo:
    url = f"{base_url}/key"
    if not api_key:
        raise KeyLookupError(f"GET {url} needs the OpenRouter API key: export OPENROUTER_API_KEY=... "
                             "(or pass --config)")
    try:
        response = await client.get(url, headers={"Authorization": f"Bearer {api_key}"})
        response.raise_for_status()
        data = response.json().get("data")
        if not isinstance(data, Mapping):
            raise ValueError("no 'data' object in the reply")
    except (httpx.HTTPError, ValueError) as exc:
        raise KeyLookupError(_describe_http_error(f"GET {url}", exc)) from None
    daily = data.get("free_model_daily_requests")
    daily = daily if isinstance(daily, Mapping) else {}

    def num(v: Any) -> int | None:
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else None

    free = data.get("is_free_tier")
    creator = data.get("creator_user_id")
    account = key_fingerprint("creator:" + creator) if isinstance(creator, str) and creator else None
    return KeyInfo(free if isinstance(free, bool) else None, num(daily.get("limit")) or None, num(daily.get("used")),
                   num(daily.get("remaining")), time.time(), account)


def day_fact(info: KeyInfo, now: float | None = None) -> Remaining | None:
    """The calibration of the account pool's ``day`` counter that the key's count implies (None: not reported)."""
    remaining = info.remaining
    if remaining is None:
        return None
    now = time.time() if now is None else now
    return Remaining("day", remaining=remaining, capacity=info.limit, reset_at=(now // DAY_S + 1) * DAY_S)


def tier_disagreement(configured_rpd: int, info: KeyInfo, settings_tier: str, rpd_override: int | None) -> str | None:
    """A warning when the config's daily capacity is not what the key says (50 vs 1000), naming the key to fix."""
    if configured_rpd == info.limit:
        return None
    where = "router_plugin.limits.openrouter.rpd" if rpd_override else "router_plugin.openrouter.tier"
    said = f"{rpd_override}/day" if rpd_override else f"{settings_tier} ({configured_rpd}/day)"
    if info.limit > configured_rpd:
        effect = (f"the router refuses {info.limit - configured_rpd} free requests a day that OpenRouter would serve")
    else:
        effect = (f"the router sends requests that OpenRouter refuses with 429 free-models-per-day after "
                  f"{info.limit}")
    fix = f"set router_plugin.openrouter.tier: {info.tier}"
    if rpd_override:
        fix += " and remove limits.openrouter.rpd"
    return f"{where}: config says {said} but the key allows {info.limit}/day: {effect} ({fix})"


def is_openrouter_free_model(model: str) -> bool:
    return provider_of(model) == "openrouter" and is_openrouter_free(model)
