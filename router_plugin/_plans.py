"""Deployment -> DeploymentPlan, derived once per deployment and cached by LiteLLM's deployment id."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .config import ENV_PREFIX
from .limits import DeploymentPlan, PlanInputs, plan_for
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
            plan = plan_for({**deployment, "litellm_params": params}, self.inputs)
            if deployment_id:
                self._by_id[deployment_id] = plan
        return plan

    def by_id(self, deployment_id: str) -> DeploymentPlan | None:
        return self._by_id.get(deployment_id)
