"""The plugin installed through the adapter: public hooks of the running line, private ones only where a line
needs them (checked first, refused loudly). Prototype for issue 15 — installer.install is unchanged and still the
real entry point; the next session moves installer/retry/timeouts/streams' LiteLLM code here (docs/adapter.md).

    router = build_router(config)            # like installer.build_router, on 1.108.7+ and 1.110.x
    install(router, settings)                # into a Router the user built
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Mapping
from typing import Any

from .. import _env  # noqa: F401  (offline-safe LiteLLM defaults, before litellm is imported)
import litellm
from litellm.router import RetryPolicy

from . import streams as _streams
from .._plans import PlanBook
from .callbacks import DISPATCH, QuotaCallbacks
from ..config import PluginConfig, Settings, load_config, parse_settings
from ..events import Events
from .installer import Installed, _router_settings
from ..store import open_stores, resolve_target
from .strategy import QuotaRouting
from . import router_api
from .hooks import ATTEMPT_HOOKS, GuardedStrategy
from .line import Line, check, detect

_ATTR = "_router_plugin"

#: What LiteLLM must do after a failed attempt, as public settings (was retry.py's private patches).
#: A RetryPolicy count OVERRIDES an exception's own ``num_retries`` (1.108.7 router.py:8427-8467; ``DefaultRetries``
#: applies to every class without a field, router_utils/get_retry_from_policy.py:52-66): so the fields of the
#: classes the plugin raises (RateLimitError: QuotaExhaustedError; ServiceUnavailableError: ChainFailedError,
#: StreamInterruptedError; Timeout: BudgetExceededError) and DefaultRetries stay None, and ``num_retries=0`` on the
#: plugin's errors keeps working. Measured: with RateLimitErrorRetries set, refusals were retried and the burst sent
#: Groq 2-9 requests too early (429s). Only classes LiteLLM would NOT retry get a count: 404 (model gone).
#: A one-deployment group never sleeps out a provider's Retry-After: its 429 is not retried (the 429 is recorded
#: for every worker; the caller gets it at once).
def retry_settings(groups: Mapping[str, int]) -> dict[str, Any]:
    walk = 2 * max(groups.values(), default=1)
    policy = RetryPolicy(NotFoundErrorRetries=walk, ContentPolicyViolationErrorRetries=0)
    single = {g: RetryPolicy(RateLimitErrorRetries=0, ContentPolicyViolationErrorRetries=0)
              for g, n in groups.items() if n == 1}
    return {"num_retries": walk, "retry_policy": policy, "model_group_retry_policy": single,
            "disable_cooldowns": True}


def build_router(config: str | os.PathLike | Mapping[str, Any], **router_kwargs: Any) -> Any:
    line = detect()
    loaded: PluginConfig = load_config(config)
    groups: dict[str, int] = {}
    for d in loaded.model_list:
        groups[d["model_name"]] = groups.get(d["model_name"], 0) + 1
    kwargs = {**retry_settings(groups), **_router_settings(loaded.router_settings), **router_kwargs}
    router = litellm.Router(model_list=loaded.model_list, **kwargs)
    install(router, loaded.settings, line=line)
    return router


def install(router: Any, settings: Settings | Mapping[str, Any] | None = None, *, line: Line | None = None
            ) -> Installed:
    line = check(router, line)  # every hook this line needs is there, or MissingHookError naming the version
    existing = router.__dict__.get(_ATTR)
    if isinstance(existing, Installed):
        if router_api.strategy_installed(router, existing.strategy.__dict__.get("_guard"), line) is not True:
            router_api.register_strategy(router, existing.strategy.__dict__["_guard"], line)
        DISPATCH.register(existing.callbacks)
        return existing
    if not isinstance(settings, Settings):
        settings = parse_settings(settings, "<install settings>")
    target = resolve_target(settings.redis_url, settings.embedded_path, settings.redis_timeout_s,
                            cluster=settings.redis_cluster)
    store, sync_store = open_stores(target, settings.key_prefix, arrival_margin_s=settings.arrival_margin_s,
                                    on_store_error=settings.on_store_error,
                                    expected_workers=settings.expected_workers)
    plans = PlanBook(settings.plan_inputs)
    owner = uuid.uuid4().hex[:12]
    events = Events()
    view = router_api.RouterView(router, line)
    strategy = QuotaRouting(view, settings, store, plans, owner, sync_store=sync_store, events=events)
    guard = GuardedStrategy(strategy)
    strategy.__dict__["_guard"] = guard
    callbacks = QuotaCallbacks(settings, store, plans, owner, events=events)
    installed = Installed(settings, events, strategy, callbacks, store, sync_store, plans)
    router.__dict__[_ATTR] = installed
    for deployment in router_api.all_deployments(router, line):
        plans.plan(deployment)
    router_api.register_strategy(router, guard, line)
    router_api.disable_cooldowns(router, line)
    _guard_calls(router, installed, line)
    DISPATCH.register(callbacks)
    ATTEMPT_HOOKS.register(owner, installed)
    return installed


def installed(router: Any) -> Installed | None:
    value = router.__dict__.get(_ATTR)
    return value if isinstance(value, Installed) else None


def _guard_calls(router: Any, inst: Installed, line: Line) -> None:
    """The budget and the stream guard around the PUBLIC ``Router.acompletion`` / ``completion`` (streams._Call,
    unchanged). On 1.108 only, LiteLLM's inner stream wrapper is also kept (private, checked by line.check) so a
    stream with no provider finish reason is told from a complete one; 1.110 raises on such a stream itself."""
    if not line.core:
        inner_iterator = router._acompletion_streaming_iterator

        async def _acompletion_streaming_iterator(*args: Any, **kwargs: Any):
            wrapped = await inner_iterator(*args, **kwargs)
            try:
                setattr(wrapped, _streams._INNER, kwargs.get("model_response", args[0] if args else None))
            except Exception:  # pragma: no cover
                pass
            return wrapped

        router._acompletion_streaming_iterator = _acompletion_streaming_iterator
    original = router.acompletion
    sync_completion = router.completion

    async def acompletion(model: str, messages: list, stream: bool = False, **kwargs: Any):
        call = _streams._Call(original, inst, model, messages, kwargs)
        return await (call.stream() if stream else call.complete())

    def completion(model: str, messages: list, stream: bool = False, **kwargs: Any):
        if not stream:
            return sync_completion(model=model, messages=messages, **kwargs)
        loop = _streams._bridge_loop()
        guarded = asyncio.run_coroutine_threadsafe(
            acompletion(model=model, messages=messages, stream=True, **kwargs), loop).result()
        return _streams.SyncGuardedStream(guarded, loop)

    router.acompletion = acompletion
    router.completion = completion
