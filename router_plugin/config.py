"""Read and validate a LiteLLM-style config plus its optional ``router_plugin:`` section.

Every error names the file, the dotted key and what is expected, e.g.::

    configs/litellm_config.yaml: router_plugin.limits.groq/openai/gpt-oss-120b.rpm: must be a positive
    integer, got -5
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .limits import LIMIT_FIELDS, LimitOverride, PlanInputs, is_openrouter_free, provider_of

ENV_PREFIX = "os.environ/"


@dataclass(frozen=True)
class Cooldowns:
    """How long one model is set aside after each kind of failure (seconds)."""

    busy_s: float = 15.0  # upstream provider busy: short, doubling per strike
    busy_max_s: float = 300.0
    server_error_s: float = 20.0  # 5xx / timeout: short, doubling per strike
    server_error_max_s: float = 300.0
    gone_s: float = 6 * 3600.0  # 404 "No endpoints found" / model_not_found: quarantined for hours
    credits_s: float = 900.0  # 402 negative balance: the whole OpenRouter pool


@dataclass(frozen=True)
class Timeouts:
    """Per-attempt time limits (seconds); the overall budget bounds the whole call, fallbacks included."""

    connect_s: float = 10.0  # connect + response headers of one attempt
    first_token_s: float = 20.0  # a stream's first content chunk
    stream_idle_s: float = 15.0  # silence between two chunks of a stream
    total_s: float = 120.0  # the whole call across attempts


@dataclass(frozen=True)
class Calibration:
    """Refresh from the providers' free endpoints (/api/v1/key, /models) before the first admission and every
    ``interval_s`` (calibration.py); 0 = off."""

    interval_s: float = 300.0


@dataclass(frozen=True)
class Metrics:
    """Prometheus metrics; ``port`` serves them on a port of our own (None: only via the helper / proxy)."""

    enabled: bool = False
    port: int | None = None


@dataclass(frozen=True)
class Settings:
    """The ``router_plugin:`` section. Every key has a sound default."""

    redis_url: str | None = None
    embedded_path: str | None = None
    key_prefix: str = "rp:"
    redis_timeout_s: float = 2.0  # connect / reply; see README "When Redis fails"
    openrouter_tier: str = "free"  # "free" -> 50/day, "funded" -> 1000/day
    limits: Mapping[str, LimitOverride] = field(default_factory=dict)
    max_wait_s: float = 0.0
    # How much later than its reservation a request may reach the provider (event-loop queueing, network).
    # Refill buckets credit drain only after this margin; fixed windows count reservations made this close
    # to a window's end in the next window too. Costs no throughput in steady state; keeps 429s at zero.
    arrival_margin_s: float = 2.0
    allow_paid: bool = False
    default_max_tokens: int = 1024
    cooldowns: Cooldowns = field(default_factory=Cooldowns)
    # Redis down: "fail_open" keeps serving from a per-process limiter holding 1/expected_workers of each
    # limit; "fail_closed" refuses every request until the store answers again.
    on_store_error: str = "fail_open"
    expected_workers: int = 4
    redis_cluster: bool = False  # redis_url points at a Redis Cluster node
    timeouts: Timeouts = field(default_factory=Timeouts)
    calibration: Calibration = field(default_factory=Calibration)
    metrics: Metrics = field(default_factory=Metrics)

    @property
    def plan_inputs(self) -> PlanInputs:
        return PlanInputs(openrouter_tier=self.openrouter_tier, allow_paid=self.allow_paid, limits=self.limits)


@dataclass(frozen=True)
class PluginConfig:
    """A validated config: the LiteLLM parts untouched, plus the plugin settings."""

    source: str
    model_list: list[dict[str, Any]]
    settings: Settings
    router_settings: dict[str, Any] = field(default_factory=dict)
    litellm_settings: dict[str, Any] = field(default_factory=dict)


_SECTION_KEYS = {
    "redis_url", "embedded_path", "key_prefix", "redis_timeout_s", "openrouter", "limits", "max_wait_s",
    "arrival_margin_s", "allow_paid", "default_max_tokens", "cooldowns", "on_store_error", "expected_workers",
    "redis_cluster", "timeouts", "calibration", "metrics",
}


def load_config(source: str | os.PathLike | Mapping[str, Any]) -> PluginConfig:
    """Load a YAML file path or an already-parsed dict, resolve ``os.environ/`` references, validate."""
    if isinstance(source, Mapping):
        where, raw = "<dict>", dict(source)
    else:
        where = str(source)
        path = Path(source)
        if not path.is_file():
            raise ConfigError(where, "(file)", "file not found", "pass the path of a LiteLLM config YAML")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
            raise ConfigError(where, "(yaml)", f"not valid YAML at {at}: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(raw, dict):
            raise ConfigError(where, "(top level)", f"must be a mapping, got {type(raw).__name__}")
    settings = parse_settings(raw.get("router_plugin"), where)
    model_list = _parse_model_list(raw.get("model_list"), where, settings)
    return PluginConfig(
        source=where,
        model_list=model_list,
        settings=settings,
        router_settings=dict(raw.get("router_settings") or {}),
        litellm_settings=dict(raw.get("litellm_settings") or {}),
    )


def resolve_env(value: Any, where: str, key: str, required: bool = True) -> Any:
    """``os.environ/NAME`` -> the variable's value, as LiteLLM resolves it."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        resolved = os.environ.get(name)
        if resolved is None and required:
            raise ConfigError(where, key, f"environment variable {name} is not set", f"export {name}=... or put it in .env")
        return resolved
    return value


def parse_settings(section: Any, where: str = "<dict>") -> Settings:
    if section is None:
        return Settings()
    if not isinstance(section, Mapping):
        raise ConfigError(where, "router_plugin", f"must be a mapping, got {type(section).__name__}")
    for key in section:
        if key not in _SECTION_KEYS:
            raise ConfigError(where, f"router_plugin.{key}", "unknown key", _did_you_mean(key, _SECTION_KEYS))
    k = "router_plugin."
    redis_url = resolve_env(section.get("redis_url"), where, k + "redis_url", required=False)
    if redis_url is not None and not isinstance(redis_url, str):
        raise ConfigError(where, k + "redis_url", "must be a string like redis://host:6379/0")
    openrouter = section.get("openrouter") or {}
    if not isinstance(openrouter, Mapping):
        raise ConfigError(where, k + "openrouter", "must be a mapping like {tier: free}")
    for key in openrouter:
        if key != "tier":
            raise ConfigError(where, f"{k}openrouter.{key}", "unknown key", "the only key is tier: free | funded")
    tier = openrouter.get("tier", "free")
    if tier not in ("free", "funded"):
        raise ConfigError(
            where, k + "openrouter.tier", f"must be 'free' (50 requests/day) or 'funded' (1000/day), got {tier!r}"
        )
    return Settings(
        redis_url=redis_url or None,
        embedded_path=_opt_str(section, "embedded_path", where),
        key_prefix=_opt_str(section, "key_prefix", where) or "rp:",
        redis_timeout_s=_number(section, "redis_timeout_s", 2.0, where, positive=True),
        openrouter_tier=tier,
        limits=_parse_limits(section.get("limits"), where),
        max_wait_s=_number(section, "max_wait_s", 0.0, where),
        arrival_margin_s=_number(section, "arrival_margin_s", 2.0, where),
        allow_paid=_bool(section, "allow_paid", False, where),
        default_max_tokens=int(_number(section, "default_max_tokens", 1024, where, positive=True, integer=True)),
        cooldowns=_parse_seconds(section.get("cooldowns"), Cooldowns, "cooldowns", where),
        on_store_error=_choice(section, "on_store_error", ("fail_open", "fail_closed"), where),
        expected_workers=int(_number(section, "expected_workers", 4, where, positive=True, integer=True)),
        redis_cluster=_bool(section, "redis_cluster", False, where),
        timeouts=_parse_seconds(section.get("timeouts"), Timeouts, "timeouts", where),
        calibration=_parse_seconds(section.get("calibration"), Calibration, "calibration", where, zero_ok=True),
        metrics=_parse_metrics(section.get("metrics"), where),
    )


def _parse_limits(raw: Any, where: str) -> dict[str, LimitOverride]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "router_plugin.limits", "must map a model (or 'openrouter') to {rpm, rpd, tpm, tpd, context}")
    out = {}
    allowed = set(LIMIT_FIELDS) | {"context"}
    for model, values in raw.items():
        key = f"router_plugin.limits.{model}"
        if not isinstance(values, Mapping):
            raise ConfigError(where, key, "must be a mapping like {rpm: 30, rpd: 1000}")
        for name in values:
            if name not in allowed:
                raise ConfigError(where, f"{key}.{name}", "unknown limit", _did_you_mean(name, allowed))
        parsed = {name: _number(values, name, None, where, positive=True, integer=True, prefix=key + ".") for name in allowed}
        out[str(model)] = LimitOverride(**{n: (int(v) if v is not None else None) for n, v in parsed.items()})
    return out


def _parse_seconds(raw: Any, cls: type, name: str, where: str, zero_ok: bool = False):
    """A sub-section of numbers (seconds) whose keys are the fields of ``cls``."""
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"router_plugin.{name}", "must be a mapping of numbers (seconds)")
    names = {f.name for f in fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(where, f"router_plugin.{name}.{key}", "unknown key", _did_you_mean(key, names))
    return cls(**{
        k: _number(raw, k, getattr(cls, k), where, positive=not zero_ok, prefix=f"router_plugin.{name}.") for k in raw
    })


def _parse_metrics(raw: Any, where: str) -> Metrics:
    if raw is None:
        return Metrics()
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "router_plugin.metrics", "must be a mapping like {enabled: true, port: 9464}")
    for key in raw:
        if key not in ("enabled", "port"):
            raise ConfigError(where, f"router_plugin.metrics.{key}", "unknown key", "expected enabled or port")
    port = _number(raw, "port", None, where, positive=True, integer=True, prefix="router_plugin.metrics.")
    if port is not None and port > 65535:
        raise ConfigError(where, "router_plugin.metrics.port", f"must be a TCP port (1-65535), got {port}")
    return Metrics(enabled=_bool(raw, "enabled", True, where, prefix="router_plugin.metrics."), port=port)


def _choice(section: Mapping, name: str, options: tuple[str, ...], where: str) -> str:
    value = section.get(name, options[0])
    if value not in options:
        raise ConfigError(where, f"router_plugin.{name}", f"must be one of {', '.join(options)}, got {value!r}")
    return value


def _parse_model_list(raw: Any, where: str, settings: Settings) -> list[dict[str, Any]]:
    import litellm  # deferred: importing litellm is slow and not needed to read settings

    if not isinstance(raw, list) or not raw:
        raise ConfigError(where, "model_list", "must be a non-empty list of {model_name, litellm_params}")
    out = []
    for i, entry in enumerate(raw):
        key = f"model_list[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(where, key, "must be a mapping with model_name and litellm_params")
        if not isinstance(entry.get("model_name"), str) or not entry["model_name"]:
            raise ConfigError(where, f"{key}.model_name", "missing: the model group this deployment serves")
        params = entry.get("litellm_params")
        if not isinstance(params, Mapping) or not isinstance(params.get("model"), str):
            raise ConfigError(where, f"{key}.litellm_params.model", "missing: e.g. openrouter/deepseek/deepseek-r1:free")
        model = params["model"]
        head = model.split("/", 1)[0] if "/" in model else ""
        if head not in litellm.provider_list:
            raise ConfigError(
                where, f"{key}.litellm_params.model", f"unknown provider {head or '(none)'!r} in {model!r}",
                "prefix the model with its provider: openrouter/<id>:free or groq/<model>",
            )
        resolved = {n: resolve_env(v, where, f"{key}.litellm_params.{n}") for n, v in params.items()}
        provider = provider_of(model)
        if provider in ("openrouter", "groq") and not resolved.get("api_key"):
            env = "OPENROUTER_API_KEY" if provider == "openrouter" else "GROQ_API_KEY"
            if not os.environ.get(env):
                raise ConfigError(
                    where, f"{key}.litellm_params.api_key", f"missing for {model}",
                    f"set api_key: os.environ/{env} and export {env}",
                )
        free = (provider == "openrouter" and is_openrouter_free(model)) or provider == "groq"
        if not free and not settings.allow_paid:
            raise ConfigError(
                where, f"{key}.litellm_params.model", f"{model} is not a free model and would cost money",
                "use a :free OpenRouter model or a groq/ model, or set router_plugin.allow_paid: true",
            )
        out.append({**entry, "litellm_params": dict(params)})
    return out


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(str(word), sorted(options), n=1)
    return f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(sorted(options))}"


def _opt_str(section: Mapping, name: str, where: str) -> str | None:
    value = section.get(name)
    if value is not None and not isinstance(value, str):
        raise ConfigError(where, f"router_plugin.{name}", f"must be a string, got {type(value).__name__}")
    return value


def _bool(section: Mapping, name: str, default: bool, where: str, prefix: str = "router_plugin.") -> bool:
    value = section.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(where, f"{prefix}{name}", f"must be true or false, got {value!r}")
    return value


def _number(
    section: Mapping, name: str, default, where: str, positive: bool = False, integer: bool = False,
    prefix: str = "router_plugin.",
):
    value = section.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(where, prefix + name, f"must be {kind}, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(where, prefix + name, f"must be {'positive' if positive else 'zero or more'}, got {value!r}")
    return value


# ---- every problem at once (``router-plugin check``) ------------------------------------------------------------

_NESTED_SECTIONS = ("openrouter", "limits", "cooldowns", "timeouts", "calibration", "metrics")


def find_problems(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[ConfigError]]:
    """Every problem of a config instead of the first: ``(raw mapping or None, errors in file order)``.

    The same checks as :func:`load_config` (which stays as it is), run on each key separately: a bad value
    of one key never hides the next one. ``raw`` is None when the file cannot be read at all.
    """
    try:
        load_config(source)
    except ConfigError as exc:
        if exc.key in ("(file)", "(yaml)", "(top level)"):
            return None, [exc]
    where = "<dict>" if isinstance(source, Mapping) else str(source)
    raw = dict(source) if isinstance(source, Mapping) else (yaml.safe_load(Path(source).read_text()) or {})
    errors: list[ConfigError] = []

    def attempt(section: Mapping[str, Any]) -> bool:
        try:
            parse_settings(section, where)
            return True
        except ConfigError as exc:
            if str(exc) not in {str(e) for e in errors}:
                errors.append(exc)
            return False

    section = raw.get("router_plugin")
    good: dict[str, Any] = {}
    if section is not None and not isinstance(section, Mapping):
        attempt(section)
    elif section is not None:
        for key, value in section.items():
            if key in _NESTED_SECTIONS and isinstance(value, Mapping):
                ok = True
                for sub, sub_value in value.items():
                    if key == "limits" and isinstance(sub_value, Mapping) and sub_value:
                        ok &= all([attempt({key: {sub: {name: v}}}) for name, v in sub_value.items()])
                    else:
                        ok &= attempt({key: {sub: sub_value}})
                if ok and attempt({key: value}):
                    good[key] = value
            elif attempt({key: value}):
                good[key] = value
    try:
        settings = parse_settings(good, where)
    except ConfigError:  # pragma: no cover - each key passed alone
        settings = Settings()

    model_list = raw.get("model_list")
    if not isinstance(model_list, list) or not model_list:
        try:
            _parse_model_list(model_list, where, settings)
        except ConfigError as exc:
            errors.append(exc)
        return raw, errors
    for i, entry in enumerate(model_list):
        errors.extend(_entry_problems(i, entry, where, settings))
    return raw, errors


def _entry_problems(i: int, entry: Any, where: str, settings: Settings) -> list[ConfigError]:
    """All problems of one ``model_list`` entry: after each one, patch it over and look again."""
    found: list[ConfigError] = []
    entry = dict(entry) if isinstance(entry, Mapping) else entry
    for _ in range(12):
        try:
            _parse_model_list([entry], where, settings)
            return found
        except ConfigError as exc:
            key = exc.key.replace("model_list[0]", f"model_list[{i}]", 1)
            found.append(ConfigError(exc.where, key, exc.problem, exc.fix))
            if not isinstance(entry, dict):
                return found
            params = dict(entry.get("litellm_params") or {}) if isinstance(entry.get("litellm_params"), Mapping) else None
            name = exc.key.rsplit(".", 1)[-1]
            if exc.key.endswith(".model_name"):
                entry["model_name"] = "?"
            elif params is not None and ".litellm_params." in exc.key and name != "model" and name in params:
                params[name] = "<unset>"  # an unset environment variable: reported, now look past it
                entry["litellm_params"] = params
            elif params is not None and name == "api_key":
                params["api_key"] = "<unset>"
                entry["litellm_params"] = params
            else:  # the model itself is wrong: what follows depends on it
                return found
    return found
