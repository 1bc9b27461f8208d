"""Put the plugin into a ``litellm.Router``: strategy, callbacks, and the retry policy that goes with them.

``build_router(config)`` builds a Router from a LiteLLM config (path or dict) and installs the plugin;
``install(router, settings)`` installs it into a Router the user built. Both are idempotent per Router.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import _env  # noqa: F401  (offline-safe LiteLLM defaults, before litellm is imported)
import litellm

from .._plans import PlanBook
from ..priority import Admission
from .callbacks import DISPATCH, QuotaCallbacks
from ..config import PluginConfig, Settings, litellm_overrides, load_config, parse_settings
from ..events import Events
from .retry import install_retry_policy
from ..store import QuotaStore, SyncQuotaStore, open_stores, resolve_target
from .strategy import QuotaRouting
from .streams import install_stream_guard

_ATTR = "_router_plugin"
log = logging.getLogger("router_plugin")


@dataclass
class Installed:
    """What ``install`` put into a router; reachable as ``router._router_plugin``."""

    settings: Settings
    events: Events  # add observers here: installed(router).events.add(my_observer)
    strategy: QuotaRouting
    callbacks: QuotaCallbacks
    store: QuotaStore
    sync_store: SyncQuotaStore
    plans: PlanBook


def build_router(config: str | os.PathLike | Mapping[str, Any], **router_kwargs: Any) -> litellm.Router:
    """A ``litellm.Router`` for the config's ``model_list``, with the plugin installed.

    ``router_settings`` from the file are passed to the Router (explicit ``router_kwargs`` win).
    """
    loaded: PluginConfig = load_config(config)
    kwargs = {**_router_settings(loaded.router_settings), **router_kwargs}
    router = litellm.Router(model_list=loaded.model_list, **kwargs)
    install(router, loaded.settings)
    return router


def install(router: litellm.Router, settings: Settings | Mapping[str, Any] | None = None, *,
            deliver_events: bool = True) -> Installed:
    """Install the strategy, callbacks and retry policy into ``router`` (once; later calls return the same).

    ``deliver_events=False``: do not register the callbacks with LiteLLM; the caller forwards the log events
    itself (the proxy handler does, see proxy.py).
    """
    existing = router.__dict__.get(_ATTR)
    if isinstance(existing, Installed):
        _ensure_strategy(router, existing)
        if deliver_events:
            DISPATCH.register(existing.callbacks)  # back in LiteLLM's lists if something cleared them
        return existing
    if not isinstance(settings, Settings):
        settings = parse_settings(settings, "<install settings>")
    target = resolve_target(settings.redis_url, settings.embedded_path, settings.redis_timeout_s,
                            cluster=settings.redis_cluster)
    store, sync_store = open_stores(  # Redis faults: on_store_error (fail_open share / fail_closed), see store/resilient.py
        target, settings.key_prefix, arrival_margin_s=settings.arrival_margin_s,
        on_store_error=settings.on_store_error, expected_workers=settings.expected_workers,
    )
    plans = PlanBook(settings.plan_inputs)
    owner = uuid.uuid4().hex[:12]
    events = Events()
    strategy = QuotaRouting(router, settings, store, plans, owner, sync_store=sync_store, events=events)
    strategy.admission = Admission.from_settings(settings)  # priorities, pace, shares (priority.py)
    callbacks = QuotaCallbacks(settings, store, plans, owner, events=events)
    installed = Installed(settings, events, strategy, callbacks, store, sync_store, plans)
    router.__dict__[_ATTR] = installed
    # Derive every plan now (bad limits fail at start, not mid-request); the OpenRouter keys of one config are
    # ONE account until the key endpoint says otherwise (calibration.py).
    plans.learn(router.model_list)
    _ensure_strategy(router, installed)
    install_retry_policy(router, chain_length=_longest_chain(router))
    install_stream_guard(router, installed)  # time limits, budget, mid-stream failover (streams.py, timeouts.py)
    if deliver_events:
        DISPATCH.register(callbacks)  # one process-wide entry in LiteLLM's lists, whatever the number of Routers
    _add_operator_observers(router, installed)
    _log_changes(router, settings)
    return installed


def _log_changes(router: litellm.Router, settings: Settings) -> None:
    """One line per LiteLLM setting the plugin overrides (WARNING when the user's config set it, README "What the
    plugin changes in your LiteLLM config"), and where the quota store is when it is the config's own Redis."""
    overrides = settings.overrides
    if not overrides:  # settings not from load_config (a Router built by the caller): read the Router itself
        given = {}
        if getattr(router, "routing_strategy", "simple-shuffle") not in ("simple-shuffle", None):
            given["routing_strategy"] = router.routing_strategy
        overrides = tuple(litellm_overrides(given, {}, _longest_chain(router)))
    for o in overrides:
        log.log(logging.WARNING if o.user_set else logging.INFO, "router_plugin overrides %s", o.line())
    if settings.store_source:
        log.info("router_plugin: quota counters in the Redis of %s (router_plugin.redis_url not set)",
                 settings.store_source)


def _add_operator_observers(router: litellm.Router, inst: Installed) -> None:
    """Opt-in from the settings: background calibration (starts lazily in the event loop) and metrics."""
    if inst.settings.calibration.interval_s > 0:
        from ..calibration import Calibrator

        calibrator = Calibrator(router, inst.settings.calibration.interval_s)
        inst.events.add(calibrator)
        inst.strategy.ready = calibrator.ensure_ready  # before the first admission: one fleet-wide refresh
        inst.store.on_empty(calibrator.store_came_back_empty)  # Redis came back empty: refresh before admitting
    if inst.settings.metrics.enabled:
        from .. import metrics

        metrics.enable(router, port=inst.settings.metrics.port, addr=inst.settings.metrics.host)


def installed(router: litellm.Router) -> Installed | None:
    value = router.__dict__.get(_ATTR)
    return value if isinstance(value, Installed) else None


def _ensure_strategy(router: litellm.Router, inst: Installed) -> None:
    """(Re)install the strategy: ``update_settings(routing_strategy=...)`` silently removes custom strategies."""
    current = router.__dict__.get("async_get_available_deployment")
    if getattr(current, "__self__", None) is not inst.strategy:
        router.set_custom_routing_strategy(inst.strategy)
    # The plugin keeps shared, provider-accurate cooldowns in Redis; LiteLLM's per-process cooldowns would only
    # make its retry loop give up while the chain still has deployments with quota.
    router.disable_cooldowns = True


def _longest_chain(router: litellm.Router) -> int:
    sizes: dict[str, int] = {}
    for deployment in router.model_list:
        sizes[deployment["model_name"]] = sizes.get(deployment["model_name"], 0) + 1
    return max(sizes.values(), default=1)


def _router_settings(raw: Mapping[str, Any]) -> dict[str, Any]:
    # The plugin is the routing strategy; a routing_strategy from the file would be replaced anyway.
    return {k: v for k, v in raw.items() if k not in ("routing_strategy", "routing_strategy_args")}
