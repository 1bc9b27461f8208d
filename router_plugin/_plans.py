"""Deployment -> DeploymentPlan, derived once per deployment and cached by LiteLLM's deployment id."""

from __future__ import annotations

import os
from dataclasses import replace
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .config import ENV_PREFIX, USER_LIMIT_FIELDS
from .limits import DeploymentPlan, LimitOverride, PlanInputs, key_fingerprint, openrouter_accounts, plan_for
from .redact import remember

_DEFAULT_KEY_ENV = {"openrouter": ("OPENROUTER_API_KEY", "OR_API_KEY"), "groq": ("GROQ_API_KEY",)}


def effective_api_key(params: Mapping[str, Any]) -> str | None:
    """The key LiteLLM will send: ``api_key`` (``os.environ/NAME`` resolved) or the provider's default variable.

    Used only to fingerprint the account; the key itself is never stored.
    """
    key = params.get("api_key")
    if isinstance(key, str) and key.startswith(ENV_PREFIX):
        key = os.environ.get(key[len(ENV_PREFIX):])
    if key:
        return str(key)
    provider = str(params.get("model", "")).split("/", 1)[0]
    for name in _DEFAULT_KEY_ENV.get(provider, ()):
        if os.environ.get(name):
            return os.environ[name]
    return None


class PlanBook:
    def __init__(self, inputs: PlanInputs):
        self.inputs = inputs
        self._by_id: dict[str, DeploymentPlan] = {}

    def plan(self, deployment: Mapping[str, Any]) -> DeploymentPlan:
        deployment_id = str((deployment.get("model_info") or {}).get("id") or "")
        plan = self._by_id.get(deployment_id) if deployment_id else None
        if plan is None:
            params = dict(deployment.get("litellm_params") or {})
            params["api_key"] = effective_api_key(params)
            remember([params["api_key"]])  # scrubbed from every text the plugin writes (redact.py)
            resolved = {**deployment, "litellm_params": params}
            plan = plan_for(resolved, self.inputs)
            lowered = user_limits(deployment, plan)
            if lowered:
                plan = plan_for(resolved, with_user_limits(self.inputs, params.get("model"), lowered))
            if deployment_id:
                self._by_id[deployment_id] = plan
        return plan

    def learn(self, model_list: list, **inputs: Any) -> bool:
        """Re-derive every plan with changed :class:`PlanInputs` (account grouping, learnt tier, live context
        windows: calibration.py); ``openrouter_creators`` (fingerprint -> creator_user_id) regroups the accounts.
        Returns whether anything changed."""
        creators = inputs.pop("openrouter_creators", None)
        rpd_by_key = inputs.pop("openrouter_rpd_by_key", None) or {}
        keys = []
        for d in model_list:
            params = d.get("litellm_params") or {}
            if str(params.get("model", "")).startswith("openrouter/"):
                name = (d.get("model_info") or {}).get("openrouter_account")
                keys.append((key_fingerprint(effective_api_key(params)), str(name) if name else None))
        accounts = inputs["openrouter_accounts"] = openrouter_accounts(keys, creators)
        rpd: dict[str, int] = {}
        for fp, value in rpd_by_key.items():
            if fp in accounts:
                rpd[accounts[fp]] = max(rpd.get(accounts[fp], 0), int(value))
        inputs["openrouter_rpd"] = rpd
        new = replace(self.inputs, **inputs)
        if new == self.inputs and self._by_id:
            return False
        self.inputs = new
        self._by_id = {}
        for d in model_list:
            self.plan(d)
        return True

    def by_id(self, deployment_id: str) -> DeploymentPlan | None:
        return self._by_id.get(deployment_id)


def user_limits(deployment: Mapping[str, Any], plan: DeploymentPlan) -> dict[str, int]:
    """The deployment's own LiteLLM ``rpm``/``tpm`` (``litellm_params`` or ``model_info``, the lower of the two)
    that are LOWER than what the plan already enforces for it: they become limits of that model."""
    out = {}
    for name in USER_LIMIT_FIELDS:
        values = [block.get(name) for block in (deployment.get("litellm_params"), deployment.get("model_info"))
                  if isinstance(block, Mapping)]
        values = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0]
        if not values:
            continue
        unit = "requests" if name == "rpm" else "tokens"
        current = [c.limit.capacity for c in plan.counters
                   if c.limit.unit == unit and c.limit.window_s == 60]  # per-minute limits of this unit
        if not current or min(values) < min(current):
            out[name] = min(values)
    return out


def with_user_limits(inputs: PlanInputs, model: Any, lowered: Mapping[str, int]) -> PlanInputs:
    """``inputs`` with the deployment's own lower limits as a model-level override (on top of any account pool)."""
    model = str(model or "")
    bare = model.split("/", 1)[1] if "/" in model else model
    base = inputs.limits.get(model) or inputs.limits.get(bare) or LimitOverride()
    merged = replace(base, **{n: min(v, getattr(base, n) or v) for n, v in lowered.items()})
    return replace(inputs, limits={**inputs.limits, model: merged})
