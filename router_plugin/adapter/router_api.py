"""The Router members the plugin uses, one function each, through the public API of the running line (no
DeprecationWarning on any line). Line checks are in line.py; nothing here reads a version string.

    1.108: model_list / get_model_list / get_model_names, set_custom_routing_strategy, plain attributes
    core (1.109.3+, 1.110.2+): registry().all / deployments / names, register_plugin, apply(ChangeSet),
                              settings_dict() (1.110) / settings() (1.109)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .line import Line, detect


def all_deployments(router: Any, line: Line | None = None) -> list[dict]:
    line = line or detect()
    return list(router.registry().all() if line.core else router.model_list)


def deployments(router: Any, group: str, line: Line | None = None) -> list[dict]:
    line = line or detect()
    if line.core:
        return list(router.registry().deployments(group) or [])
    return list(router.get_model_list(model_name=group) or [])


def group_names(router: Any, line: Line | None = None) -> list[str]:
    line = line or detect()
    return list(router.registry().names() if line.core else router.get_model_names())


def register_strategy(router: Any, strategy: Any, line: Line | None = None) -> None:
    """Install ``strategy`` (a CustomRoutingStrategyBase) as the router's pick, for async and sync calls."""
    line = line or detect()
    if line.core:
        router.register_plugin(strategy)
    else:
        router.set_custom_routing_strategy(strategy)


def strategy_installed(router: Any, strategy: Any, line: Line | None = None) -> bool | None:
    """Still ours? (``update_settings(routing_strategy=...)`` drops a custom strategy.) None: the line offers no
    public way to read it back (core) — re-register instead (idempotent)."""
    line = line or detect()
    if line.core:
        return None
    current = router.__dict__.get("async_get_available_deployment")
    return getattr(current, "__self__", None) is strategy


def setting(router: Any, name: str, line: Line | None = None) -> Any:
    """A router setting as the user gave it (None when unset or unknown to this line)."""
    line = line or detect()
    if not line.core:
        return router.__dict__.get(name)
    if callable(getattr(router, "settings_dict", None)):  # 1.110: the Rust settings object has no attribute per field
        return router.settings_dict().get(name)
    return getattr(router.settings(), name, None)  # 1.109: RouterSettings


def mid_stream_continuation(router: Any) -> bool:
    """LiteLLM's own mid-stream fallback continuation (1.109+, a plain attribute on 1.109.3 and 1.110.2; 1.108 has
    none)."""
    return getattr(router, "enable_mid_stream_fallback_continuation", False) is True


def apply_settings(router: Any, settings: Mapping[str, Any], line: Line | None = None) -> None:
    """Router settings at run time: ``apply(ChangeSet)`` on core (``retry_policy`` and friends included), plain
    attributes on 1.108 (``num_retries``, ``disable_cooldowns``, ``retry_policy``)."""
    line = line or detect()
    if line.core:
        from litellm.router_api import ChangeSet

        plain = {k: v for k, v in settings.items() if k == "num_retries"}
        rest = {k: v for k, v in settings.items() if k != "num_retries"}
        router.apply(ChangeSet(assign=plain, settings=rest))
    else:
        for name, value in settings.items():
            setattr(router, name, value)


def disable_cooldowns(router: Any, line: Line | None = None) -> None:
    apply_settings(router, {"disable_cooldowns": True}, line)


def num_retries(router: Any, line: Line | None = None) -> int:
    value = setting(router, "num_retries", line) if (line or detect()).core else router.num_retries
    return value if isinstance(value, int) else 0


class RouterView:
    """What ``strategy.QuotaRouting`` reads from its ``router`` (model_list, get_model_list, get_model_names),
    through the public API of the running line: the strategy's code stays the same on every line."""

    def __init__(self, router: Any, line: Line | None = None):
        self._router = router
        self._line = line or detect()

    @property
    def real(self) -> Any:
        return self._router

    @property
    def model_list(self) -> list[dict]:
        return all_deployments(self._router, self._line)

    def get_model_list(self, model_name: str | None = None) -> list[dict]:
        if model_name is None:
            return all_deployments(self._router, self._line)
        return deployments(self._router, model_name, self._line)

    def get_model_names(self) -> list[str]:
        return group_names(self._router, self._line)

    def __getattr__(self, name: str) -> Any:  # anything else: the real router
        return getattr(self._router, name)
