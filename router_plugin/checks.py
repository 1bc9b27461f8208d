"""``router-plugin check CONFIG``: every problem of a config, with its key and a fix, without starting anything.

Errors are what :func:`router_plugin.load_config` would refuse (all of them, not the first: see
``config.find_problems``). Warnings are configs that load but will hurt:

* a model known to be retired (``limits.GROQ_RETIRED``, ``limits.OPENROUTER_RETIRED_FREE``): it answers 404 and
  gets quarantined, so the chain is one deployment shorter than it looks;
* a chain (model group) with no Groq deployment: when the OpenRouter account's day is spent (50 requests on the
  free tier) every request of the group is refused until UTC midnight;
* a Groq model missing from the built-in limits table (the default row is assumed);
* a ``router_plugin.limits`` entry that no deployment uses (a typo: the override does nothing);
* ``metrics.port`` set while metrics are disabled;
* every LiteLLM setting of the config that the plugin overrides (``config.litellm_overrides``, the same list the
  installer logs at start), with why. NOTE lines (not problems): a LiteLLM default the plugin changes, and the
  config's own Redis when the plugin takes it as its store.

No network, no Redis: ``check`` can run in CI. ``ignore_env`` turns unset environment variables (API keys kept
out of CI) into warnings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import find_problems, litellm_overrides, litellm_redis, longest_chain
from .errors import ConfigError, _one_line
from .limits import (
    GROQ_DEFAULT_LIMITS,
    GROQ_FREE_LIMITS,
    GROQ_RETIRED,
    OPENROUTER_RETIRED_FREE,
    provider_of,
)


@dataclass(frozen=True)
class Problem:
    level: str  # "error" | "warning" | "note" (what the plugin does with the config; not a problem)
    key: str
    problem: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"level": self.level, "key": self.key, "problem": self.problem, "fix": self.fix}


@dataclass
class CheckResult:
    source: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"config": self.source, "ok": self.ok, "errors": len(self.errors), "warnings": len(self.warnings),
                "problems": [p.as_dict() for p in self.problems]}

    def render(self) -> str:
        lines = []
        for p in self.problems:
            tag = {"error": "ERROR", "warning": "WARN ", "note": "NOTE "}.get(p.level, p.level.upper())
            lines.append(_one_line(f"{tag}  {p.key}: {p.problem}"))
            if p.fix:
                lines.append(f"       {p.fix}" if p.fix.startswith("why: ") else f"       fix: {p.fix}")
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{self.source}: {verdict} — {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join(lines)


def _is_env_problem(err: ConfigError) -> bool:
    return err.problem.startswith("environment variable") or err.problem.startswith("missing for ")


def check(source: str | os.PathLike | Mapping[str, Any], ignore_env: bool = False) -> CheckResult:
    where = "<dict>" if isinstance(source, Mapping) else str(source)
    raw, errors = find_problems(source)
    result = CheckResult(where)
    for err in errors:
        level = "warning" if ignore_env and _is_env_problem(err) else "error"
        result.problems.append(Problem(level, err.key, err.problem, err.fix))
    if raw is not None:
        result.problems.extend(_warnings(raw))
        result.problems.extend(litellm_changes(raw, where))
    return result


def litellm_changes(raw: Mapping[str, Any], where: str) -> list[Problem]:
    """What the plugin does with the rest of the LiteLLM config: each setting it overrides (WARN when the config
    sets it, NOTE for a LiteLLM default), and the Redis it takes from the config as its store (NOTE)."""
    router_settings = raw.get("router_settings") if isinstance(raw.get("router_settings"), Mapping) else {}
    litellm_settings = raw.get("litellm_settings") if isinstance(raw.get("litellm_settings"), Mapping) else {}
    out = [Problem("warning" if o.user_set else "note", o.key, o.change, f"why: {o.why}")
           for o in litellm_overrides(router_settings, litellm_settings, longest_chain(raw.get("model_list")))]
    section = raw.get("router_plugin") if isinstance(raw.get("router_plugin"), Mapping) else {}
    if not section.get("redis_url") and not section.get("embedded_path"):
        try:
            found = litellm_redis(raw, where)
        except ConfigError:  # reported as an error already
            found = None
        if found is not None:
            out.append(Problem("note", "router_plugin.redis_url", f"not set: the quota counters go to the Redis of "
                               f"{found[1]}", "set router_plugin.redis_url to use another Redis"))
    return out


def _warnings(raw: Mapping[str, Any]) -> list[Problem]:
    out: list[Problem] = []
    model_list = raw.get("model_list") if isinstance(raw.get("model_list"), list) else []
    groups: dict[str, list[tuple[int, str]]] = {}
    models_in_use: set[str] = set()
    for i, entry in enumerate(model_list):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("litellm_params"), Mapping):
            continue
        model = entry["litellm_params"].get("model")
        if not isinstance(model, str):
            continue
        key = f"model_list[{i}].litellm_params.model"
        bare = model.split("/", 1)[1] if "/" in model else model
        models_in_use.update((model, bare))
        if isinstance(entry.get("model_name"), str) and entry["model_name"]:
            groups.setdefault(entry["model_name"], []).append((i, model))
        provider = provider_of(model)
        if provider == "groq" and bare in GROQ_RETIRED:
            out.append(Problem("warning", key, f"{model} is retired on Groq ({GROQ_RETIRED[bare]})",
                               f"replace it, e.g. with groq/{GROQ_RETIRED[bare].rsplit('use ', 1)[-1]}"
                               if "use " in GROQ_RETIRED[bare] else "remove it from the chain"))
        elif provider == "openrouter" and bare in OPENROUTER_RETIRED_FREE:
            out.append(Problem("warning", key, f"{model} has left OpenRouter's free roster (404 No endpoints found); "
                                               "the router would quarantine it on its first request",
                               "replace it with a current :free model (router-plugin models lists them)"))
        elif provider == "groq" and bare not in GROQ_FREE_LIMITS and bare not in GROQ_RETIRED:
            rpm, rpd, tpm, tpd = GROQ_DEFAULT_LIMITS
            out.append(Problem("warning", key, f"{model} is not in the built-in Groq limits table; assuming "
                                               f"rpm {rpm}, rpd {rpd}, tpm {tpm}, tpd {tpd}",
                               f"set router_plugin.limits.{model}: {{rpm: .., rpd: .., tpm: .., tpd: ..}} from "
                               "console.groq.com/settings/limits"))
    for group, members in groups.items():
        providers = {provider_of(m) for _, m in members}
        if "openrouter" in providers and "groq" not in providers:
            first = members[0][0]
            out.append(Problem(
                "warning", f"model_list[{first}].model_name",
                f"chain '{group}' has no Groq fallback: when the OpenRouter account's free requests for the day are "
                "spent (50 on the free tier), every request of this group is refused until 00:00 UTC",
                f"add a Groq deployment to '{group}' after the OpenRouter ones, e.g. groq/openai/gpt-oss-120b"))
    section = raw.get("router_plugin") if isinstance(raw.get("router_plugin"), Mapping) else {}
    limits = section.get("limits") if isinstance(section.get("limits"), Mapping) else {}
    for name in limits:
        if name != "openrouter" and str(name) not in models_in_use:
            out.append(Problem("warning", f"router_plugin.limits.{name}",
                               "no deployment uses this model, so the override does nothing",
                               "use the deployment's litellm_params.model exactly, e.g. groq/openai/gpt-oss-120b"))
    metrics = section.get("metrics") if isinstance(section.get("metrics"), Mapping) else {}
    if metrics.get("port") and metrics.get("enabled") is False:
        out.append(Problem("warning", "router_plugin.metrics.port", "set while metrics.enabled is false: nothing "
                           "will listen on it", "set router_plugin.metrics.enabled: true, or remove the port"))
    return out
