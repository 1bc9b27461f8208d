"""Read and validate a LiteLLM-style config plus its optional ``router_plugin:`` section.

Every error names the file, the dotted key and what is expected, e.g.::

    configs/litellm_config.yaml: router_plugin.limits.groq/openai/gpt-oss-120b.rpm: must be a positive
    integer, got -5
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .limits import LIMIT_FIELDS, LimitOverride, PlanInputs, is_openrouter_free, provider_of

ENV_PREFIX = "os.environ/"
#: LiteLLM's own per-deployment limits (``litellm_params`` or ``model_info``): the plugin enforces them when lower.
USER_LIMIT_FIELDS = ("rpm", "tpm")


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
    host: str = "127.0.0.1"  # the address ``port`` binds: this machine only, unless set (0.0.0.0: every interface)


@dataclass(frozen=True)
class Pace:
    """``pace.<pool or model>``: release the day evenly; ``burst`` requests ahead of the even pace (None: an hour's
    share of the day, ``ceil(capacity / 24)``). See priority.py and README "Priorities, pacing and fair shares"."""

    burst: int | None = None


@dataclass(frozen=True)
class Shares:
    """``shares``: at most ``fractions[pool]`` of each pool's day per ``per`` identity (key, user or team)."""

    per: str = "key"
    fractions: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """``priority`` / ``pace`` / ``shares`` together: who may take what is left of a pool (priority.py)."""

    reserve: float = 0.0  # priority.reserve: this fraction of every counter is kept for priority 0
    pace: Mapping[str, Pace] = field(default_factory=dict)
    shares: Shares | None = None

    @property
    def active(self) -> bool:
        return bool(self.reserve > 0 or self.pace or (self.shares and self.shares.fractions))


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
    max_waiters: int = 1000  # per model group: requests waiting in line (max_wait_s > 0) past it are refused at once
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
    policy: Policy = field(default_factory=Policy)  # keys priority, pace, shares (priority.py)
    # proxy.fast_refusals: answer a known caller's quota refusal in front of the proxy app (adapter/proxy.py)
    fast_refusals: bool = True
    # Filled by load_config from the rest of the file (not keys of the section): where redis_url came from when
    # it is the user's LiteLLM Redis, and the LiteLLM settings the plugin overrides (logged as warnings at start).
    store_source: str | None = None
    overrides: tuple["Override", ...] = ()

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
    "redis_url", "embedded_path", "key_prefix", "redis_timeout_s", "openrouter", "limits", "max_wait_s", "max_waiters",
    "arrival_margin_s", "allow_paid", "default_max_tokens", "cooldowns", "on_store_error", "expected_workers",
    "redis_cluster", "timeouts", "calibration", "metrics", "priority", "pace", "shares", "proxy",
}


@dataclass(frozen=True)
class Override:
    """A LiteLLM setting of the user's config that the plugin replaces: one WARNING line at start and in ``check``."""

    key: str  # e.g. router_settings.num_retries
    change: str  # what happens to it
    why: str
    user_set: bool = True  # False: a LiteLLM default the plugin changes (logged at INFO, a NOTE in check)

    def line(self) -> str:
        return f"{self.key}: {self.change} — {self.why}"


# LiteLLM's top-level config sections (proxy_server.load_config and friends) plus ours: a key close to one of them
# is a misspelling (its settings would be silently ignored); another unknown key is left to LiteLLM.
KNOWN_SECTIONS = (
    "model_list", "litellm_settings", "router_settings", "general_settings", "environment_variables", "include",
    "callback_settings", "guardrails", "credential_list", "mcp_servers", "mcp_tools", "search_tools", "prompts",
    "vector_store_registry", "files_settings", "finetune_settings", "assistant_settings", "pass_through_endpoints",
    "router_plugin",
)
_MAPPING_SECTIONS = ("router_plugin", "router_settings", "litellm_settings", "general_settings", "environment_variables")


def read_raw(source: str | os.PathLike | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(where, top-level mapping)`` of a YAML file or a dict; unreadable input is a ConfigError naming the place."""
    if isinstance(source, Mapping):
        load_dotenv_files(None)
        return "<dict>", dict(source)
    where = str(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(where, "(file)", "file not found", "pass the path of a LiteLLM config YAML")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(where, "(file)", f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line}",
                          "save the file as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(where, exc) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(where, "(top level)", f"must be a mapping, got {type(raw).__name__}",
                          "start the file with model_list:")
    load_dotenv_files(path)
    return where, raw


def _yaml_error(where: str, exc: yaml.YAMLError) -> ConfigError:
    """``file:line:col: (yaml): ...`` at the line to fix: for an unclosed bracket or quote, where it was opened."""
    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    context = str(getattr(exc, "context", "") or "")
    problem = str(getattr(exc, "problem", None) or exc).strip()
    opened = context_mark is not None and context.startswith(("while parsing a flow mapping", "while parsing a flow sequence",
                                                               "while scanning a quoted",
                                                               "while scanning a double-quoted",
                                                               "while scanning a single-quoted"))
    mark = context_mark if opened else (problem_mark or context_mark)
    if mark is None:
        return ConfigError(where, "(yaml)", f"not valid YAML: {problem}")
    at = f"line {mark.line + 1}, column {mark.column + 1}"
    if opened:
        what = context.replace("while parsing a ", "").replace("while scanning a ", "")
        detail = f"{what} opened here is not closed ({problem}"
        if problem_mark is not None:
            detail += f" at line {problem_mark.line + 1}, column {problem_mark.column + 1}"
        detail += ")"
    else:
        detail = problem
    return ConfigError(f"{where}:{mark.line + 1}:{mark.column + 1}", "(yaml)", f"not valid YAML at {at}: {detail}")


def in_litellm_proxy() -> bool:
    """Running inside the LiteLLM proxy, which resolves every ``os.environ/`` of its config when it reads the file,
    before the plugin is imported: a ``.env`` read by the plugin would come too late for LiteLLM's own keys."""
    import sys

    proxy_server = sys.modules.get("litellm.proxy.proxy_server")
    return bool(getattr(proxy_server, "user_config_file_path", None))


def _set_it(name: str, example: str = "...") -> str:
    """How to set a variable, true where we run (the proxy does not read a ``.env`` in its working directory)."""
    if in_litellm_proxy():
        return f"export {name}={example} before starting the proxy, which does not read a .env in its directory"
    return f"export {name}={example} or put it in .env"


def load_dotenv_files(path: Path | None) -> None:
    """Read ``.env`` from the working directory and next to the config into the environment, never overriding a
    variable that is already set (so an exported value always wins). python-dotenv comes with LiteLLM. Not inside
    the LiteLLM proxy (see :func:`in_litellm_proxy`): the plugin must see the same environment as LiteLLM."""
    if in_litellm_proxy():
        return
    try:
        from dotenv import load_dotenv
    except ImportError:  # pragma: no cover - a LiteLLM dependency
        return
    seen = set()
    for candidate in (Path.cwd() / ".env", path.resolve().parent / ".env" if path is not None else None):
        if candidate is not None and candidate.is_file() and candidate not in seen:
            seen.add(candidate)
            load_dotenv(candidate, override=False)


def top_level_problems(raw: Mapping[str, Any], where: str) -> list[ConfigError]:
    """Sections that are not mappings, and misspelled section names (whose settings would be ignored)."""
    out = []
    for key in raw:
        if key not in KNOWN_SECTIONS:
            close = difflib.get_close_matches(str(key), KNOWN_SECTIONS, n=1, cutoff=0.75)
            if close:
                out.append(ConfigError(where, str(key), "unknown section: its settings would be ignored",
                                       f"did you mean {close[0]!r}?"))
    for name in _MAPPING_SECTIONS:
        value = raw.get(name)
        if value is not None and not isinstance(value, Mapping):
            out.append(ConfigError(where, name, f"must be a mapping of settings, got {_shown(value)}",
                                   f"indent its settings under {name}: or remove the line"))
    for name in ("router_settings", "litellm_settings"):  # LiteLLM values the plugin computes with
        block = raw.get(name)
        if isinstance(block, Mapping) and block.get("num_retries") is not None:
            try:
                _number(block, "num_retries", None, where, integer=True, prefix=f"{name}.")
            except ConfigError as exc:
                out.append(exc)
    return out


def load_config(source: str | os.PathLike | Mapping[str, Any]) -> PluginConfig:
    """Load a YAML file path or an already-parsed dict, resolve ``os.environ/`` references, validate."""
    where, raw = read_raw(source)
    for problem in top_level_problems(raw, where):
        raise problem
    settings = parse_settings(raw.get("router_plugin"), where)
    model_list = _parse_model_list(raw.get("model_list"), where, settings)
    for problem in policy_problems(settings.policy, model_list, where):
        raise problem
    router_settings = dict(raw.get("router_settings") or {})
    litellm_settings = dict(raw.get("litellm_settings") or {})
    settings = complete_settings(settings, raw, where)
    return PluginConfig(
        source=where,
        model_list=model_list,
        settings=settings,
        router_settings=router_settings,
        litellm_settings=litellm_settings,
    )


def complete_settings(settings: Settings, raw: Mapping[str, Any], where: str) -> Settings:
    """The parts of the settings that come from the rest of the LiteLLM config: the user's Redis as the store
    (unless the section names one) and the LiteLLM settings the plugin must override."""
    router_settings = raw.get("router_settings") if isinstance(raw.get("router_settings"), Mapping) else {}
    litellm_settings = raw.get("litellm_settings") if isinstance(raw.get("litellm_settings"), Mapping) else {}
    section = raw.get("router_plugin") if isinstance(raw.get("router_plugin"), Mapping) else {}
    changes: dict[str, Any] = {}
    if settings.redis_url is None and not section.get("embedded_path"):
        from .store.connect import embedded_path_problem, redis_url_problem

        found = litellm_redis(raw, where)
        if found is not None:
            problem = redis_url_problem(found[0])
            if problem:
                raise ConfigError(where, found[1], problem)
            changes["redis_url"], changes["store_source"] = found
        elif embedded_path_problem(None):  # the embedded default: its files must be writable
            raise ConfigError(where, "router_plugin.embedded_path", str(embedded_path_problem(None)),
                              "set router_plugin.redis_url, or an embedded_path this user can write")
    changes["overrides"] = tuple(litellm_overrides(router_settings, litellm_settings, longest_chain(raw.get("model_list"))))
    return replace(settings, **changes)


def longest_chain(model_list: Any) -> int:
    sizes: dict[str, int] = {}
    for entry in model_list if isinstance(model_list, list) else []:
        if isinstance(entry, Mapping) and isinstance(entry.get("model_name"), str):
            sizes[entry["model_name"]] = sizes.get(entry["model_name"], 0) + 1
    return max(sizes.values(), default=1)


def litellm_redis(raw: Mapping[str, Any], where: str,
                  environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """The Redis the user's LiteLLM config already uses, as ``(url, where it came from)``, in LiteLLM's order:
    ``router_settings`` redis_url / redis_host+redis_port(+redis_password); ``litellm_settings.cache_params``
    (type redis) when ``cache: true``; ``general_settings.coordination_redis``; then the proxy's environment
    convention (``REDIS_URL``, else ``REDIS_HOST``+``REDIS_PORT``, ``REDIS_PASSWORD``, ``REDIS_USERNAME``,
    ``REDIS_SSL``; litellm/_redis.py get_redis_url_from_environment). None: no Redis anywhere."""
    env = os.environ if environ is None else environ
    router_settings = raw.get("router_settings") if isinstance(raw.get("router_settings"), Mapping) else {}
    litellm_settings = raw.get("litellm_settings") if isinstance(raw.get("litellm_settings"), Mapping) else {}
    general = raw.get("general_settings") if isinstance(raw.get("general_settings"), Mapping) else {}
    cache_params = litellm_settings.get("cache_params") if litellm_settings.get("cache") else None
    coordination = general.get("coordination_redis")
    blocks = [("router_settings", router_settings, "redis_")]
    if isinstance(cache_params, Mapping) and cache_params.get("type", "redis") == "redis":
        blocks.append(("litellm_settings.cache_params", cache_params, ""))
    elif cache_params is not None and not isinstance(cache_params, Mapping):
        raise ConfigError(where, "litellm_settings.cache_params", f"must be a mapping, got {_shown(cache_params)}")
    if isinstance(coordination, Mapping):
        blocks.append(("general_settings.coordination_redis", coordination, ""))
    for name, block, prefix in blocks:
        url = _redis_value(block, prefix + "url", name, where, env)
        if url:
            return url, f"{name}.{prefix}url"
        host = _redis_value(block, prefix + "host", name, where, env)
        port = _redis_value(block, prefix + "port", name, where, env)
        if host and port:
            password = _redis_value(block, prefix + "password", name, where, env)
            username = _redis_value(block, prefix + "username", name, where, env)
            return _redis_url(host, port, password, username, False, f"{name}.{prefix}port", where), \
                f"{name}.{prefix}host/{prefix}port"
    if env.get("REDIS_URL"):
        return env["REDIS_URL"], "the REDIS_URL environment variable"
    if env.get("REDIS_HOST") and env.get("REDIS_PORT"):
        return (_redis_url(env["REDIS_HOST"], env["REDIS_PORT"], env.get("REDIS_PASSWORD"), env.get("REDIS_USERNAME"),
                           str(env.get("REDIS_SSL", "")).lower() == "true", "REDIS_PORT (environment)", where),
                "the REDIS_HOST/REDIS_PORT environment variables")
    return None


def _redis_value(block: Mapping[str, Any], name: str, section: str, where: str, env: Mapping[str, str]) -> str | None:
    value = block.get(name)
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        var = value[len(ENV_PREFIX):]
        value = env.get(var)
        if value is None:
            raise ConfigError(where, f"{section}.{name}", f"environment variable {var} is not set",
                              f"{_set_it(var)}; the plugin keeps its counters in this Redis")
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(where, f"{section}.{name}", f"must be a string, got {_shown(value)}")
    return str(value)


def _redis_url(host: str, port: str, password: str | None, username: str | None, ssl: bool, key: str,
               where: str) -> str:
    from urllib.parse import quote

    if not str(port).isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(where, key, f"must be a TCP port (1-65535), got {port!r}")
    auth = ""
    if password:
        auth = f"{quote(username, safe='') if username else ''}:{quote(password, safe='')}@"
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{'rediss' if ssl else 'redis'}://{auth}{host}:{port}/0"


# LiteLLM settings the plugin replaces, and why (README "What the plugin changes in your LiteLLM config").
_WHY_STRATEGY = ("the plugin is the routing strategy: it walks the chain in list order and sends a request only "
                 "where every quota counter (shared by all workers in Redis) has room")
_WHY_COOLDOWNS = ("the plugin sets a deployment aside itself, for all workers and until the provider's real reset; "
                  "LiteLLM's per-process cooldowns would end the request while the chain still has quota")
_WHY_SLEEP = ("the plugin never sleeps between attempts: the next deployment with quota is tried at once "
              "(router_plugin.max_wait_s is the one place it waits)")
_COOLDOWN_KEYS = ("cooldown_time", "allowed_fails", "allowed_fails_policy", "disable_cooldowns")


def litellm_overrides(router_settings: Mapping[str, Any], litellm_settings: Mapping[str, Any],
                      chain_length: int) -> list[Override]:
    """Every LiteLLM setting of the user's config that the plugin overrides, with why. Pure: the installer logs
    these as warnings at start and ``router-plugin check`` shows them."""
    out: list[Override] = []
    if "routing_strategy" in router_settings:
        out.append(Override("router_settings.routing_strategy",
                            f"{router_settings['routing_strategy']!r} is replaced by router_plugin's strategy",
                            _WHY_STRATEGY))
    if "routing_strategy_args" in router_settings:
        out.append(Override("router_settings.routing_strategy_args", "ignored (they belong to the replaced strategy)",
                            _WHY_STRATEGY))
    retries_at = "router_settings" if "num_retries" in router_settings else (
        "litellm_settings" if "num_retries" in litellm_settings else None)
    needed = 2 * chain_length
    if retries_at is not None:
        value = (router_settings if retries_at == "router_settings" else litellm_settings)["num_retries"]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < needed:
            out.append(Override(
                f"{retries_at}.num_retries", f"raised from {value} to {needed} (2 x the longest chain of {chain_length})",
                "an attempt that fails moves to the next deployment, so the request needs one attempt per deployment "
                "plus one retry each on a server error; the plugin never retries what cannot succeed (its own "
                "refusals, malformed requests), so no quota is spent by the extra retries"))
    for at, block in (("router_settings", router_settings), ("litellm_settings", litellm_settings)):
        for key in _COOLDOWN_KEYS:
            if key in block and not (key == "disable_cooldowns" and block[key] is True):
                out.append(Override(f"{at}.{key}", "has no effect: LiteLLM's cooldowns are disabled", _WHY_COOLDOWNS))
    if not any(o.key.endswith(_COOLDOWN_KEYS) for o in out) and not router_settings.get("disable_cooldowns"):
        out.append(Override("router_settings.disable_cooldowns", "set to true (LiteLLM's default cools a deployment "
                            "down for 5 s after failures)", _WHY_COOLDOWNS, user_set=False))
    if router_settings.get("retry_after"):
        out.append(Override("router_settings.retry_after", "has no effect: no sleep between attempts", _WHY_SLEEP))
    return out


def resolve_env(value: Any, where: str, key: str, required: bool = True) -> Any:
    """``os.environ/NAME`` -> the variable's value, as LiteLLM resolves it."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX):]
        resolved = os.environ.get(name)
        if resolved is None and required:
            raise ConfigError(where, key, f"environment variable {name} is not set", _set_it(name))
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
    raw_url = section.get("redis_url")
    if isinstance(raw_url, str) and raw_url.startswith(ENV_PREFIX) and os.environ.get(raw_url[len(ENV_PREFIX):]) is None:
        name = raw_url[len(ENV_PREFIX):]
        raise ConfigError(where, k + "redis_url", f"environment variable {name} is not set",
                          f"{_set_it(name, 'redis://host:6379/0')}; without it every host would keep its "
                          "own counters (remove redis_url to use the embedded store on purpose)")
    redis_url = resolve_env(raw_url, where, k + "redis_url")
    if redis_url is not None and not isinstance(redis_url, str):
        raise ConfigError(where, k + "redis_url", f"must be a string like redis://host:6379/0, got {_shown(redis_url)}")
    from .store.connect import embedded_path_problem, redis_url_problem  # a bad URL or path fails at load

    embedded = section.get("embedded_path")
    # The default embedded path is checked by complete_settings, once it is known that no other Redis is used.
    problem = redis_url_problem(redis_url) if redis_url else (
        embedded_path_problem(embedded) if isinstance(embedded, str) else None)
    if problem:
        raise ConfigError(where, k + ("redis_url" if redis_url else "embedded_path"), problem)
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
        max_waiters=int(_number(section, "max_waiters", 1000, where, positive=True, integer=True)),
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
        policy=_parse_policy(section, where),
        fast_refusals=_parse_proxy(section.get("proxy"), where),
    )


def _parse_proxy(raw: Any, where: str) -> bool:
    """``proxy: {fast_refusals: true}`` (the only key): whether the proxy answers a known caller's quota refusal
    in front of LiteLLM's app (README "Refusals through the proxy")."""
    if raw is None:
        return True
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "router_plugin.proxy", f"must be a mapping like {{fast_refusals: true}}, got {_shown(raw)}")
    for key in raw:
        if key != "fast_refusals":
            raise ConfigError(where, f"router_plugin.proxy.{key}", "unknown key", "the only key is fast_refusals: true | false")
    return _bool(raw, "fast_refusals", True, where, prefix="router_plugin.proxy.")


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


_POOLS_HINT = "openrouter (every OpenRouter :free model of an account), groq (every groq/ model) or a groq/ model"
_SHARE_PER = ("key", "user", "team")


def _policy_pool(name: Any, key: str, where: str) -> str:
    """A pool a ``pace`` / ``shares`` entry names: ``openrouter``, ``groq`` or a model (not an OpenRouter model:
    its day is the account's)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(where, key, f"must name a pool, got {_shown(name)}", f"expected {_POOLS_HINT}")
    if name.startswith("openrouter/") or (name.endswith(":free") and "/" in name):
        raise ConfigError(where, key, "an OpenRouter model has no day of its own: its account's pool has one",
                          "use openrouter instead")
    return name


def _parse_policy(section: Mapping, where: str) -> Policy:
    """``priority: {reserve}``, ``pace: {<pool>: true | {burst: N}}``, ``shares: {per, <pool>: fraction}``."""
    reserve = 0.0
    raw = section.get("priority")
    if raw is not None:
        if not isinstance(raw, Mapping):
            raise ConfigError(where, "router_plugin.priority", f"must be a mapping like {{reserve: 0.2}}, got {_shown(raw)}")
        for key in raw:
            if key != "reserve":
                raise ConfigError(where, f"router_plugin.priority.{key}", "unknown key",
                                  "the only key is reserve: the fraction of every pool kept for priority-0 requests")
        reserve = _number(raw, "reserve", 0.0, where, prefix="router_plugin.priority.")
        if reserve >= 1:
            raise ConfigError(where, "router_plugin.priority.reserve", f"must be a fraction below 1, got {reserve!r}",
                              "e.g. 0.2 keeps 20% of every pool's day and minute for priority-0 requests")
    pace: dict[str, Pace] = {}
    raw = section.get("pace")
    if raw is not None:
        if not isinstance(raw, Mapping):
            raise ConfigError(where, "router_plugin.pace", f"must be a mapping like {{openrouter: true}}, got {_shown(raw)}")
        for name, value in raw.items():
            key = f"router_plugin.pace.{name}"
            pool = _policy_pool(name, key, where)
            if value is True:
                pace[pool] = Pace()
            elif value is False or value is None:
                continue
            elif isinstance(value, Mapping):
                for sub in value:
                    if sub != "burst":
                        raise ConfigError(where, f"{key}.{sub}", "unknown key",
                                          "the only key is burst: requests allowed ahead of the even pace")
                burst = _number(value, "burst", None, where, positive=True, integer=True, prefix=key + ".")
                pace[pool] = Pace(burst=int(burst) if burst is not None else None)
            else:
                raise ConfigError(where, key, f"must be true, false or {{burst: N}}, got {_shown(value)}")
    shares = None
    raw = section.get("shares")
    if raw is not None:
        if not isinstance(raw, Mapping):
            raise ConfigError(where, "router_plugin.shares", f"must be a mapping like {{per: key, openrouter: 0.5}}, "
                              f"got {_shown(raw)}")
        per = raw.get("per", "key")
        if per not in _SHARE_PER:
            raise ConfigError(where, "router_plugin.shares.per", f"must be one of {', '.join(_SHARE_PER)}, got {_shown(per)}",
                              "key: each LiteLLM virtual key; user: each user_id; team: each team_id")
        fractions: dict[str, float] = {}
        for name in raw:
            if name == "per":
                continue
            key = f"router_plugin.shares.{name}"
            pool = _policy_pool(name, key, where)
            value = _number(raw, name, None, where, positive=True, prefix="router_plugin.shares.")
            if value is None:
                continue
            if value > 1:
                raise ConfigError(where, key, f"must be a fraction of the pool's day (at most 1), got {value!r}",
                                  "e.g. 0.5: no one takes more than half of the day")
            fractions[pool] = float(value)
        shares = Shares(per=per, fractions=fractions)
    return Policy(reserve=float(reserve), pace=pace, shares=shares)


def policy_problems(policy: Policy, model_list: Any, where: str) -> list[ConfigError]:
    """``pace`` / ``shares`` entries that name a model no deployment of ``model_list`` uses (they would do nothing)."""
    models: set[str] = {"openrouter", "groq"}
    for entry in model_list if isinstance(model_list, list) else []:
        params = entry.get("litellm_params") if isinstance(entry, Mapping) else None
        model = params.get("model") if isinstance(params, Mapping) else None
        if isinstance(model, str):
            models |= {model, model.split("/", 1)[-1]}
    out = []
    for section, names in (("pace", policy.pace), ("shares", policy.shares.fractions if policy.shares else {})):
        for name in names:
            if name not in models:
                close = difflib.get_close_matches(name, sorted(models - {"openrouter", "groq"}), n=1)
                out.append(ConfigError(where, f"router_plugin.{section}.{name}", "no deployment of model_list uses "
                                       "this model", (f"did you mean {close[0]!r}? " if close else "")
                                       + f"expected {_POOLS_HINT}"))
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
        if key not in ("enabled", "port", "host"):
            raise ConfigError(where, f"router_plugin.metrics.{key}", "unknown key", "expected enabled, port or host")
    port = _number(raw, "port", None, where, positive=True, integer=True, prefix="router_plugin.metrics.")
    if port is not None and port > 65535:
        raise ConfigError(where, "router_plugin.metrics.port", f"must be a TCP port (1-65535), got {port}")
    host = raw.get("host", "127.0.0.1")
    if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host.strip()):
        raise ConfigError(where, "router_plugin.metrics.host", f"must be an address to listen on, got {host!r}",
                          "e.g. 127.0.0.1 (the default: this machine only) or 0.0.0.0 (every interface)")
    return Metrics(enabled=_bool(raw, "enabled", True, where, prefix="router_plugin.metrics."), port=port,
                   host=host.strip())


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
        if "model_name" not in entry or entry["model_name"] in (None, ""):
            raise ConfigError(where, f"{key}.model_name", "missing: the model group this deployment serves")
        if not isinstance(entry["model_name"], str):
            raise ConfigError(where, f"{key}.model_name", f"must be a string, got {_shown(entry['model_name'])}",
                              "quote it: model_name: \"123\"")
        params = entry.get("litellm_params")
        if params is not None and not isinstance(params, Mapping):
            raise ConfigError(where, f"{key}.litellm_params", f"must be a mapping, got {_shown(params)}",
                              "e.g. litellm_params: {model: groq/openai/gpt-oss-120b, api_key: os.environ/GROQ_API_KEY}")
        if not isinstance(params, Mapping) or params.get("model") in (None, ""):
            raise ConfigError(where, f"{key}.litellm_params.model", "missing: e.g. openrouter/deepseek/deepseek-r1:free")
        if not isinstance(params["model"], str):
            raise ConfigError(where, f"{key}.litellm_params.model", f"must be a string, got {_shown(params['model'])}",
                              "e.g. openrouter/deepseek/deepseek-r1:free")
        info = entry.get("model_info")
        if info is not None and not isinstance(info, Mapping):
            raise ConfigError(where, f"{key}.model_info", f"must be a mapping, got {_shown(info)}",
                              "e.g. model_info: {id: my-deployment} or remove it")
        for name in ("api_key", "api_base"):
            value = params.get(name)
            if value is not None and not isinstance(value, str):
                shown = type(value).__name__ if name == "api_key" else _shown(value)  # never echo a key
                raise ConfigError(where, f"{key}.litellm_params.{name}", f"must be a string, got {shown}",
                                  f"quote it, or better use {name}: os.environ/NAME" if name == "api_key"
                                  else "e.g. https://api.groq.com/openai/v1")
        for block, values in (("litellm_params", params), ("model_info", info or {})):
            for name in USER_LIMIT_FIELDS:
                _number(values, name, None, where, positive=True, integer=True, prefix=f"{key}.{block}.")
        model = params["model"]
        head = model.split("/", 1)[0] if "/" in model else ""
        if head not in litellm.provider_list:
            raise ConfigError(
                where, f"{key}.litellm_params.model", f"unknown provider {head or '(none)'!r} in {model!r}",
                "prefix the model with its provider: openrouter/<id>:free, groq/<model>, or openai/<model> with "
                "api_base for an OpenAI-compatible server (vLLM, Ollama, another provider)",
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
        free = (provider == "openrouter" and is_openrouter_free(model)) or provider == "groq" \
            or declared_free(entry, where, key)
        if not free and not settings.allow_paid:
            raise ConfigError(
                where, f"{key}.litellm_params.model", f"{model} is not a free model and would cost money",
                "use a :free OpenRouter model or a groq/ model; for a $0 server (self-hosted vLLM/Ollama) declare "
                "this deployment free with model_info: {router_plugin: {free: true}}; or set "
                "router_plugin.allow_paid: true for the whole file",
            )
        out.append({**entry, "litellm_params": dict(params)})
    return out


def declared_free(entry: Mapping, where: str, key: str) -> bool:
    """``model_info: {router_plugin: {free: true}}`` on a ``model_list`` entry: the user says it costs nothing."""
    info = entry.get("model_info")
    ours = info.get("router_plugin") if isinstance(info, Mapping) else None
    if ours is None:
        return False
    if not isinstance(ours, Mapping) or set(ours) - {"free"} or not isinstance(ours.get("free", False), bool):
        raise ConfigError(where, f"{key}.model_info.router_plugin", f"expected {{free: true}}, got {_shown(ours)}")
    return ours.get("free") is True


def _shown(value: Any) -> str:
    """A value in an error line: short, and never a whole nested structure."""
    text = repr(value)
    return text[:40] + "..." if len(text) > 40 else text


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
    value = section.get(name)
    if value is None:  # absent, or an empty value (``key:``): the default
        value = default
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(where, prefix + name, f"must be {kind}, got {_shown(value)}")
    if not math.isfinite(value):
        raise ConfigError(where, prefix + name, f"must be a finite number, got {value!r}",
                          "give a number of seconds (or a count), not .nan or .inf")
    if value < 0 or (positive and value == 0):
        raise ConfigError(where, prefix + name, f"must be {'positive' if positive else 'zero or more'}, got {value!r}")
    return value


# ---- every problem at once (``router-plugin check``) ------------------------------------------------------------

_NESTED_SECTIONS = ("openrouter", "limits", "cooldowns", "timeouts", "calibration", "metrics", "priority", "pace",
                    "shares")


def find_problems(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[ConfigError]]:
    """Every problem of a config instead of the first: ``(raw mapping or None, errors in file order)``.

    The same checks as :func:`load_config` (which stays as it is), run on each key separately: a bad value
    of one key never hides the next one. ``raw`` is None when the file cannot be read at all.
    """
    try:
        where, raw = read_raw(source)
    except ConfigError as exc:
        return None, [exc]
    errors: list[ConfigError] = top_level_problems(raw, where)

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
    if isinstance(section, Mapping):  # not a mapping: reported by top_level_problems
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

    try:
        complete_settings(settings, raw, where)
    except ConfigError as exc:
        errors.append(exc)
    model_list = raw.get("model_list")
    if not isinstance(model_list, list) or not model_list:
        try:
            _parse_model_list(model_list, where, settings)
        except ConfigError as exc:
            errors.append(exc)
        return raw, errors
    for i, entry in enumerate(model_list):
        errors.extend(_entry_problems(i, entry, where, settings))
    errors.extend(policy_problems(_policy_entries(section, where), model_list, where))
    return raw, errors


def _policy_entries(section: Any, where: str) -> Policy:
    """The ``pace`` / ``shares`` entries that are valid on their own (a bad entry beside them must not hide that
    another one names a model no deployment uses)."""
    pace: dict[str, Pace] = {}
    fractions: dict[str, float] = {}
    for name in ("pace", "shares"):
        block = section.get(name) if isinstance(section, Mapping) else None
        for key, value in (block.items() if isinstance(block, Mapping) else ()):
            if key == "per":
                continue
            try:
                policy = _parse_policy({name: {key: value}}, where)
            except ConfigError:
                continue
            pace.update(policy.pace)
            fractions.update(policy.shares.fractions if policy.shares else {})
    return Policy(pace=pace, shares=Shares(fractions=fractions) if fractions else None)


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
            elif exc.key.endswith(".model_info"):
                entry.pop("model_info", None)
            elif name in USER_LIMIT_FIELDS and ".model_info." in exc.key:
                entry["model_info"] = {k: v for k, v in entry["model_info"].items() if k != name}
            elif params is not None and name in USER_LIMIT_FIELDS:
                params.pop(name, None)
                entry["litellm_params"] = params
            elif params is not None and ".litellm_params." in exc.key and name != "model" and name in params:
                params[name] = "<unset>"  # an unset environment variable: reported, now look past it
                entry["litellm_params"] = params
            elif params is not None and name == "api_key":
                params["api_key"] = "<unset>"
                entry["litellm_params"] = params
            else:  # the model itself is wrong: what follows depends on it
                return found
    return found
