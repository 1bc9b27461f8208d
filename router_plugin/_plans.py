"""Deployment -> DeploymentPlan, derived once per deployment and cached by LiteLLM's deployment id."""

from __future__ import annotations

import os
from dataclasses import replace
from collections.abc import Mapping
from typing import Any

from .config import ENV_PREFIX
from .limits import DeploymentPlan, PlanInputs, key_fingerprint, openrouter_accounts, plan_for

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
            plan = plan_for({**deployment, "litellm_params": params}, self.inputs)
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
