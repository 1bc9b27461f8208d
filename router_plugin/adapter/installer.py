"""Put the plugin into a ``litellm.Router``: strategy, callbacks, and the retry policy that goes with them.

``build_router(config)`` builds a Router from a LiteLLM config (path or dict) and installs the plugin;
``install(router, settings)`` installs it into a Router the user built. Both are idempotent per Router.

The same steps on every line (line.py decides which; ``line.check`` first verifies every hook the line needs and
raises ``MissingHookError`` naming the LiteLLM version and the hook):

* the strategy behind ``GuardedStrategy`` (hooks.py: the plugin's own errors leave with ``num_retries = 0``),
  registered through router_api (1.108 ``set_custom_routing_strategy``, core ``register_plugin``);
* the callbacks (callbacks.py) and the stream guard around the public ``acompletion`` / ``completion``
  (streams.py);
* after a failed attempt: on 1.108 the private retry discipline (retry.py) and per-attempt limits (timeouts.py),
  on the core lines public settings only (``retry_settings``) and ``AttemptHooks`` (hooks.py). README "Support
  table" says what each line can and cannot do.
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
from litellm.router import RetryPolicy

from .._plans import PlanBook
from ..priority import Admission
from . import router_api
from .callbacks import DISPATCH, QuotaCallbacks
from ..config import PluginConfig, Settings, litellm_overrides, load_config, parse_settings
from ..errors import ConfigError
from ..events import Events
from .hooks import ATTEMPT_HOOKS, GuardedStrategy
from .line import Line, check, detect
from ..store import QuotaStore, SyncQuotaStore, open_stores, resolve_target
from .strategy import QuotaRouting, install_prefetch
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
    guard: GuardedStrategy | None = None  # what LiteLLM calls: the strategy behind hooks.GuardedStrategy
    line: Line | None = None


def build_router(config: str | os.PathLike | Mapping[str, Any], **router_kwargs: Any) -> litellm.Router:
    """A ``litellm.Router`` for the config's ``model_list``, with the plugin installed.

    ``router_settings`` from the file are passed to the Router (explicit ``router_kwargs`` win).
    """
    detect()  # an unsupported LiteLLM: one line, before anything is built
    loaded: PluginConfig = load_config(config)
    kwargs = {**_router_settings(loaded.router_settings), **router_kwargs}
    _refuse_mid_stream_continuation(kwargs.get(_MID_STREAM), loaded.source)
    router = litellm.Router(model_list=loaded.model_list, **kwargs)
    install(router, loaded.settings)
    return router


#: LiteLLM 1.109+'s own mid-stream fallback continuation (#41127): it would race the plugin's (streams.py).
_MID_STREAM = "enable_mid_stream_fallback_continuation"


def _refuse_mid_stream_continuation(value: Any, where: str) -> None:
    if value is True:
        raise ConfigError(where, f"router_settings.{_MID_STREAM}", "must not be true: LiteLLM's continuation would "
                          "race router_plugin's own", "remove it; router_plugin continues broken streams itself")


def install(router: litellm.Router, settings: Settings | Mapping[str, Any] | None = None, *,
            deliver_events: bool = True) -> Installed:
    """Install the strategy, callbacks and retry policy into ``router`` (once; later calls return the same).

    ``deliver_events=False``: do not register the callbacks with LiteLLM; the caller forwards the log events
    itself (the proxy handler does, see proxy.py).
    """
    line = check(router)  # every hook this line needs is there, or MissingHookError naming the version and hook
    existing = router.__dict__.get(_ATTR)
    if isinstance(existing, Installed):
        _ensure_strategy(router, existing)
        if deliver_events:
            DISPATCH.register(existing.callbacks)  # back in LiteLLM's lists if something cleared them
        return existing
    _refuse_mid_stream_continuation(router_api.mid_stream_continuation(router), "<router>")
    if not isinstance(settings, Settings):
        settings = parse_settings(settings, "<install settings>")
    target = resolve_target(settings.redis_url, settings.embedded_path, settings.redis_timeout_s,
                            cluster=settings.redis_cluster)
    store, sync_store = open_stores(  # Redis faults: on_store_error (fail_open share / fail_closed), see store/resilient.py
        target, settings.key_prefix, arrival_margin_s=settings.arrival_margin_s,
        on_store_error=settings.on_store_error, expected_workers=settings.expected_workers,
    )
    if line.core:
        # The reservation lane (store/lane.py) is the 1.108 line's for now: on 1.110.2 a stream that fails on its
        # first chunk gets no attempt-hook failure note, so the retry skips that deployment only through the
        # cooldown the failure callback writes to Redis, and the lane's faster pick overtook that write
        # (tests/test_streams.py). Redis-py carries the reservations there, as before.
        store.lane_allowed = False
    plans = PlanBook(settings.plan_inputs)
    owner = uuid.uuid4().hex[:12]
    events = Events()
    # The strategy reads deployments through RouterView (router_api): the same code on every line, no warning.
    strategy = QuotaRouting(router_api.RouterView(router, line), settings, store, plans, owner,
                            sync_store=sync_store, events=events)
    strategy.admission = Admission.from_settings(settings)  # priorities, pace, shares (priority.py)
    callbacks = QuotaCallbacks(settings, store, plans, owner, events=events)
    installed = Installed(settings, events, strategy, callbacks, store, sync_store, plans,
                          guard=GuardedStrategy(strategy), line=line)
    router.__dict__[_ATTR] = installed
    # Derive every plan now (bad limits fail at start, not mid-request); the OpenRouter keys of one config are
    # ONE account until the key endpoint says otherwise (calibration.py).
    plans.learn(router_api.all_deployments(router, line))
    _ensure_strategy(router, installed)
    groups = _groups(router, line)
    if line.core:  # public settings + the per-attempt hooks (hooks.py)
        router_api.apply_settings(router, retry_settings(groups, router_api.num_retries(router, line)), line)
        ATTEMPT_HOOKS.register(owner, installed)
    else:  # 1.108: the private retry discipline its public API cannot express (line.NEEDS, retry.py)
        from .retry import install_retry_policy

        install_retry_policy(router, chain_length=max(groups.values(), default=1))
    if store.lane_allowed:  # the first walk's reservation at the call's entry (strategy.py): it is sent at once
        # through the lane (above); without it there is nothing to gain
        install_prefetch(router, lambda: router.__dict__[_ATTR].strategy)
    install_stream_guard(router, installed, line)  # budget, stream guard; 1.108: attempt limits (timeouts.py)
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
        routing = router_api.setting(router, "routing_strategy")
        if routing not in ("simple-shuffle", None):
            given["routing_strategy"] = routing
        overrides = tuple(litellm_overrides(given, {}, max(_groups(router).values(), default=1)))
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
        inst.strategy.is_ready = calibrator.is_ready
        inst.store.on_empty(calibrator.store_came_back_empty)  # Redis came back empty: refresh before admitting
    if inst.settings.metrics.enabled:
        from .. import metrics

        metrics.enable(router, port=inst.settings.metrics.port, addr=inst.settings.metrics.host)


def installed(router: litellm.Router) -> Installed | None:
    value = router.__dict__.get(_ATTR)
    return value if isinstance(value, Installed) else None


def _ensure_strategy(router: litellm.Router, inst: Installed) -> None:
    """(Re)install the strategy: ``update_settings(routing_strategy=...)`` silently removes custom strategies."""
    if router_api.strategy_installed(router, inst.guard, inst.line) is not True:
        router_api.register_strategy(router, inst.guard, inst.line)
    # The plugin keeps shared, provider-accurate cooldowns in Redis; LiteLLM's per-process cooldowns would only
    # make its retry loop give up while the chain still has deployments with quota.
    router_api.disable_cooldowns(router, inst.line)


def _groups(router: litellm.Router, line: Line | None = None) -> dict[str, int]:
    """Deployments per model group."""
    sizes: dict[str, int] = {}
    for deployment in router_api.all_deployments(router, line):
        sizes[deployment["model_name"]] = sizes.get(deployment["model_name"], 0) + 1
    return sizes


#: What LiteLLM must do after a failed attempt on the core lines, as public settings (1.108: retry.py).
#: A RetryPolicy count OVERRIDES an exception's own ``num_retries`` (1.108.7 router.py:8427-8467; ``DefaultRetries``
#: applies to every class without a field): so the fields of the classes the plugin raises (RateLimitError:
#: QuotaExhaustedError; ServiceUnavailableError: ChainFailedError, StreamInterruptedError; Timeout:
#: BudgetExceededError) and DefaultRetries stay None, and ``num_retries=0`` on the plugin's errors (hooks.py) holds.
#: Measured: with RateLimitErrorRetries set, refusals were retried and a 4 x 25 burst sent Groq 2-9 requests too
#: early (429s). Only classes LiteLLM would NOT retry get a count: 404 (model gone) and 400 (a 402 or a context
#: window too small belongs to the deployment; a rejection of the request itself is stopped by the next pick,
#: hooks.GuardedStrategy). A one-deployment group never sleeps out a provider's Retry-After: its 429 is not
#: retried (recorded for every worker; the caller gets it now), nor its 400 (there is no other deployment).
def retry_settings(groups: Mapping[str, int], num_retries: int = 0) -> dict[str, Any]:
    walk = 2 * max(groups.values(), default=1)
    policy = RetryPolicy(NotFoundErrorRetries=walk, BadRequestErrorRetries=walk, ContentPolicyViolationErrorRetries=0)
    single = {g: RetryPolicy(RateLimitErrorRetries=0, BadRequestErrorRetries=0, ContentPolicyViolationErrorRetries=0)
              for g, n in groups.items() if n == 1}
    return {"num_retries": max(num_retries or 0, walk), "retry_policy": policy, "model_group_retry_policy": single}


def _router_settings(raw: Mapping[str, Any]) -> dict[str, Any]:
    # The plugin is the routing strategy; a routing_strategy from the file would be replaced anyway.
    return {k: v for k, v in raw.items() if k not in ("routing_strategy", "routing_strategy_args")}
