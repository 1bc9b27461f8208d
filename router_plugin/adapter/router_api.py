"""The Router members the plugin uses, each through the public API of the running line (no DeprecationWarning).

    1.108: get_model_list / get_model_names / model_list, set_custom_routing_strategy, plain attributes
    1.110: registry().deployments / names / all, register_plugin, apply(ChangeSet(settings=...))
"""

from __future__ import annotations

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
    public way to read it back (1.110) — re-register instead (idempotent)."""
    line = line or detect()
    if line.core:
        return None
    current = router.__dict__.get("async_get_available_deployment")
    return getattr(current, "__self__", None) is strategy


def disable_cooldowns(router: Any, line: Line | None = None) -> None:
    line = line or detect()
    if line.core:
        from litellm.router_api import ChangeSet

        router.apply(ChangeSet(settings={"disable_cooldowns": True}))
    else:
        router.disable_cooldowns = True


def set_num_retries(router: Any, value: int) -> None:
    router.num_retries = value  # a plain attribute on 1.108; a ChangeSet(assign=...) behind the front on 1.110


class RouterView:
    """What ``strategy.QuotaRouting`` reads from its ``router`` (get_model_list, get_model_names), through the
    public API of the running line: hands the unchanged strategy a router that never warns."""

    def __init__(self, router: Any, line: Line | None = None):
        self._router = router
        self._line = line or detect()

    def get_model_list(self, model_name: str | None = None) -> list[dict]:
        if model_name is None:
            return all_deployments(self._router, self._line)
        return deployments(self._router, model_name, self._line)

    def get_model_names(self) -> list[str]:
        return group_names(self._router, self._line)

    def __getattr__(self, name: str) -> Any:  # anything else: the real router
        return getattr(self._router, name)
