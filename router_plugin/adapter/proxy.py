"""The LiteLLM proxy hook: ``litellm_settings: {callbacks: router_plugin.proxy_handler}``.

LiteLLM resolves that string with ``get_instance_fn`` (``litellm/proxy/types_utils/utils.py``): it first looks
for a file ``router_plugin.py`` next to the config and, when there is none, imports the installed package
``router_plugin`` and takes its ``proxy_handler`` attribute. So ``pip install router_plugin`` is all a proxy needs.

In every proxy worker, ``proxy_handler``:

* installs the plugin (strategy, callbacks, retry policy) into whatever Router the proxy uses
  (``litellm.proxy.proxy_server.llm_router``) in its pre-call hook, i.e. before every request is routed: a Router
  the proxy rebuilt gets the plugin, and a strategy that ``update_settings`` removed is put back;
* reads the plugin's settings from the ``router_plugin:`` section of the config file the proxy loaded;
* adds ``x-router-plugin-*`` headers to every reply (success, stream and failure);
* makes sure a 429 reaches the client with ``Retry-After`` (the plugin's refusal carries it; an upstream 429's
  ``retry-after`` or ``X-RateLimit-Reset`` is forwarded as ``Retry-After``), and with ``x-should-retry: false`` when
  that wait is longer than ``max_wait_s`` (the openai SDKs would otherwise sleep it out and try again by themselves);
* answers LiteLLM's health checks (``GET /health`` and ``background_health_checks``) for metered deployments from
  the plugin's shared state instead of sending a completion upstream (see ``health_from_store``).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import _env  # noqa: F401  (offline-safe LiteLLM defaults, before litellm is imported)
from litellm.integrations.custom_logger import CustomLogger

from .. import providers
from ..config import Settings, load_config
from ..errors import ConfigError
from ..priority import PRIORITY_HEADER, PRIORITY_KEY, PRIORITY_SOURCE_KEY
from .strategy import EARLY_KEY, METADATA_KEY, ChainFailedError, QuotaExhaustedError
from . import router_api
from .timeouts import FAILED_KEY

log = logging.getLogger("router_plugin")

#: Explicit path of the config whose ``router_plugin:`` section to use (default: the file the proxy loaded).
CONFIG_ENV = "ROUTER_PLUGIN_CONFIG"
#: Set to 1/true to add ``x-router-plugin-worker: <pid>`` (which proxy worker answered; for diagnostics).
WORKER_HEADER_ENV = "ROUTER_PLUGIN_WORKER_HEADER"

H_DEPLOYMENT = "x-router-plugin-deployment"
H_ATTEMPTS = "x-router-plugin-attempts"
H_REMAINING_MINUTE = "x-router-plugin-remaining-minute"
H_REMAINING_DAY = "x-router-plugin-remaining-day"
H_POOL = "x-router-plugin-pool"
H_WORKER = "x-router-plugin-worker"
H_SHOULD_RETRY = "x-should-retry"  # honoured by the openai SDKs: "false" = do not retry this reply yourself

_MINUTE_LIMITS = ("minute", "rpm")  # OpenRouter account pool: fixed clock minute; Groq: requests/min bucket
_DAY_LIMITS = ("day", "rpd")
_RAW_MODEL_NAME_KEY = "_complexity_router_return_raw_model_name"  # litellm.constants.RETURN_RAW_MODEL_NAME_METADATA_KEY
_RETRY_AFTER_KEY = "_router_plugin_retry_after"  # request_data key: failure hook -> headers hook
_REMAINING_KEY = "_router_plugin_chain_remaining"  # request_data key: failure hook -> headers hook


def find_config_path() -> str | None:
    """The config file whose ``router_plugin:`` section applies, in this order:

    ``ROUTER_PLUGIN_CONFIG``; the file the proxy loaded (``proxy_server.user_config_file_path``, as given on the
    CLI, relative to the proxy's working directory); ``WORKER_CONFIG``'s ``"config"``; ``CONFIG_FILE_PATH``.
    """
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        return explicit
    try:
        from litellm.proxy import proxy_server

        loaded = getattr(proxy_server, "user_config_file_path", None)
    except Exception:  # pragma: no cover - the proxy extra is not installed
        loaded = None
    if isinstance(loaded, str) and loaded:
        return loaded
    worker = os.environ.get("WORKER_CONFIG")
    if worker:
        try:
            value = json.loads(worker)
        except ValueError:
            value = worker
        if isinstance(value, Mapping) and isinstance(value.get("config"), str):
            return value["config"]
        if isinstance(value, str) and value.endswith((".yaml", ".yml")):
            return value
    return os.environ.get("CONFIG_FILE_PATH") or None


class ProxyHandler(CustomLogger):
    """One per proxy worker process (LiteLLM imports ``router_plugin.proxy_handler`` in each worker)."""

    def __init__(self, settings: Settings | None = None, config_path: str | None = None):
        super().__init__()
        self._settings = settings
        self._config_path = config_path
        self._installed: Any = None
        self.worker_header = os.environ.get(WORKER_HEADER_ENV, "").lower() in ("1", "true", "yes")

    # ---- settings and installation ---------------------------------------------------------------------------

    def settings(self) -> Settings:
        """Read once per worker: the ``router_plugin:`` section, validated with the whole config (a paid model or
        an unset ``os.environ/`` key is a ``ConfigError`` naming the file and key)."""
        if self._settings is None:
            path = self._config_path or find_config_path()
            if path is None:
                log.warning("router_plugin: no config file found (set %s); using default settings", CONFIG_ENV)
                self._settings = Settings()
            else:
                if not Path(path).is_file():
                    raise ConfigError(path, "(file)", f"not found from the proxy's working directory {os.getcwd()}",
                                      f"set {CONFIG_ENV} to the config's absolute path")
                self._settings = load_config(path).settings
                self._config_path = path
        return self._settings

    def ensure_installed(self, router: Any = None) -> Any:
        """Install into ``router`` (default: the proxy's current Router). Idempotent; cheap on every request."""
        from .installer import install

        if router is None:
            from litellm.proxy import proxy_server

            router = proxy_server.llm_router
        if router is None:
            return None
        # LiteLLM fixes a request's callbacks when the request starts, before this hook installs anything: callbacks
        # registered now would miss the very request that installed them (its failures would go unrecorded and the
        # next attempt would hit the same exhausted pool). This handler is registered from the config, so it is in
        # every request's list: it forwards the log events itself, and the plugin registers none of its own.
        installed = install(router, self.settings(), deliver_events=False)  # also re-installs a reset strategy
        _book_every_attempt(router, installed)
        _take_early_picks(router, installed)
        guard_health_checks()
        if self.settings().fast_refusals:
            install_fast_refusals(self)
        if installed is not self._installed:
            log.info("router_plugin: installed into the proxy's router in worker pid %d (%d deployments)",
                     os.getpid(), len(router_api.all_deployments(router)))
        self._installed = installed
        return installed

    async def install_when_ready(self, timeout_s: float = 300.0, connections: int = 8) -> None:
        """At worker startup: install as soon as the proxy has built its Router, then open a few store connections,
        so that the first burst of requests neither installs nor connects (on a busy event loop, connecting dozens
        of clients at once is what a burst would otherwise pay, and what makes store timeouts look like an outage).
        """
        from litellm.proxy import proxy_server

        deadline = time.monotonic() + timeout_s
        while proxy_server.llm_router is None:
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.1)
        try:
            installed = self.ensure_installed()
            plans = [p for p in (installed.plans.plan(d) for d in installed.strategy.router.model_list) if p.metered]
            if plans:
                await asyncio.gather(*(installed.store.peek(plans[i % len(plans)]) for i in range(connections)),
                                     return_exceptions=True)
        except Exception as exc:  # the pre-call hook installs (and reports) on the first request instead
            log.warning("router_plugin: could not install at startup: %s: %s", type(exc).__name__, exc)

    # ---- log events, forwarded to the plugin's callbacks (see ensure_installed) ------------------------------

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        if self._installed is not None:
            await self._installed.callbacks.async_log_success_event(kwargs, response_obj, start_time, end_time)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        if self._installed is not None:
            await self._installed.callbacks.async_log_failure_event(kwargs, response_obj, start_time, end_time)

    # ---- LiteLLM proxy hooks ---------------------------------------------------------------------------------

    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        self.ensure_installed()
        priority_into_metadata(data)  # the x-router-plugin-priority header (priority.py)
        _remember_caller(data, user_api_key_dict, call_type)  # LiteLLM authenticated it: see FastRefusals
        if isinstance(data, dict) and data.get("stream") is True:
            # The proxy restamps every streamed chunk's ``model`` with the requested group (or, after a fallback,
            # the other group): the client could not tell which deployment answered, unlike the SDK path. LiteLLM's
            # own "return the raw model name" request flag (set by its complexity router) leaves the chunks as the
            # deployment sent them.
            meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else data.get("litellm_metadata")
            if not isinstance(meta, dict):
                meta = data.setdefault("metadata", {})
            meta.setdefault(_RAW_MODEL_NAME_KEY, True)
        await decide_early(self._installed, data, call_type)  # a refusal raises here, before the Router
        return data

    async def async_post_call_failure_hook(self, request_data, original_exception, user_api_key_dict,
                                           traceback_str=None):
        """A 429 must carry ``Retry-After``: the plugin's refusal has it; for an upstream 429 forward the
        provider's ``retry-after`` (or its ``X-RateLimit-Reset``); else ask the store when the chain frees up."""
        await release_early(self._installed, request_data, original_exception)
        try:
            status = getattr(original_exception, "status_code", None)
            if isinstance(original_exception, (QuotaExhaustedError, ChainFailedError)) \
                    and isinstance(request_data, dict) and not _state(request_data).get("model"):
                request_data[_REMAINING_KEY] = await self._chain_remaining(request_data)
            if status == 503 and isinstance(original_exception, ChainFailedError):
                retry_after = _header(getattr(original_exception, "headers", None), "retry-after") \
                    or await self._chain_retry_after(request_data)
                if retry_after is not None and isinstance(request_data, dict):
                    request_data[_RETRY_AFTER_KEY] = retry_after
                return None
            if status != 429:
                return None
            retry_after = _header(getattr(original_exception, "headers", None), "retry-after")
            if retry_after is None:
                retry_after = _upstream_retry_after(original_exception)
            if retry_after is None:
                retry_after = await self._chain_retry_after(request_data)
            if retry_after is None:
                return None
            if isinstance(request_data, dict):
                request_data[_RETRY_AFTER_KEY] = retry_after
            if not getattr(original_exception, "headers", None):
                from litellm.litellm_core_utils.llm_response_utils.get_headers import get_response_headers

                raw = getattr(original_exception, "litellm_response_headers", None)
                original_exception.headers = {**get_response_headers(dict(raw) if raw else None),
                                              "retry-after": retry_after}
        except Exception as exc:  # never turn a 429 into a 500
            log.warning("router_plugin: could not set Retry-After: %s", exc)
        return None

    async def async_post_call_response_headers_hook(self, data, user_api_key_dict, response, request_headers=None,
                                                    litellm_call_info=None):
        state = _state(data)
        headers = response_headers(state)
        left = data.get(_REMAINING_KEY) if isinstance(data, Mapping) and not state.get("model") else None
        if isinstance(left, Mapping):  # refused: what the chain still has, not 0 (see _chain_remaining)
            headers[H_REMAINING_MINUTE] = str(int(left.get("minute", 0)))
            headers[H_REMAINING_DAY] = str(int(left.get("day", 0)))
        if self.worker_header:
            headers[H_WORKER] = str(os.getpid())
        pool = self._pool_label(state)
        if pool:
            headers[H_POOL] = pool
        if response is None and isinstance(data, Mapping) and data.get(_RETRY_AFTER_KEY):
            headers["retry-after"] = str(data[_RETRY_AFTER_KEY])
            if self._should_not_retry(data[_RETRY_AFTER_KEY]):
                # The openai SDKs (python, node) sleep a 429/503's Retry-After (up to 60 s) and send the request
                # again, twice, unless told not to: the caller would wait out a wait the operator did not choose.
                headers[H_SHOULD_RETRY] = "false"
        return headers

    def _should_not_retry(self, retry_after: Any) -> bool:
        """True when the wait is longer than the operator's bound (``max_wait_s``; 0, the default: always)."""
        try:
            wait_s = float(retry_after)
        except (TypeError, ValueError):
            return True
        try:
            bound = float(self.settings().max_wait_s)
        except Exception:
            bound = 0.0
        return wait_s > bound

    # ---- helpers ---------------------------------------------------------------------------------------------

    def _pool_label(self, state: Mapping[str, Any]) -> str | None:
        if self._installed is None or not state.get("deployment_id"):
            return None
        plan = self._installed.plans.by_id(str(state["deployment_id"]))
        return _ascii(plan.pool_label) if plan is not None and plan.pool_label else None

    async def _chain_remaining(self, request_data: Any) -> dict[str, int]:
        """For a refusal (no deployment chosen): the most any metered deployment of the requested group has left
        this minute and today. The minute is usually 0 (that is why it was refused); the day is what the pools
        still hold — a refusal for the minute must not read as "nothing left today"."""
        inst = self._installed
        best = {"minute": 0, "day": 0}
        if inst is None or not isinstance(request_data, Mapping):
            return best
        seen: set[tuple[str, str]] = set()
        for deployment in inst.strategy.router.get_model_list(model_name=request_data.get("model")) or []:
            plan = inst.plans.plan(deployment)
            if not plan.metered:
                continue
            for counter in plan.counters:
                kind = "minute" if counter.limit.name in _MINUTE_LIMITS else \
                    "day" if counter.limit.name in _DAY_LIMITS else None
                if kind is None or (plan.slot, counter.key) in seen:
                    continue
                seen.add((plan.slot, counter.key))
                outcome = await inst.store.peek(dataclasses.replace(plan, counters=(counter,)), counters_only=True)
                states = getattr(outcome, "states", None)
                if states:
                    best[kind] = max(best[kind], int(states[0].remaining))
        return best

    async def _chain_retry_after(self, request_data: Any) -> str | None:
        """Seconds until the first deployment of the request's model group can take a request again."""
        inst = self._installed
        if inst is None or not isinstance(request_data, Mapping):
            return None
        group = request_data.get("model")
        router = inst.strategy.router
        waits = []
        for deployment in router.get_model_list(model_name=group) or []:
            plan = inst.plans.plan(deployment)
            if not plan.metered:
                continue
            outcome = await inst.store.peek(plan)
            wait_s = getattr(outcome, "wait_s", None)
            if wait_s is None:  # a reservation would succeed now
                return "1"
            if not outcome.never:
                waits.append(wait_s)
        return str(max(1, math.ceil(min(waits)))) if waits else None


# ---- every failed attempt booked ---------------------------------------------------------------------------------
#
# The proxy passes ONE LiteLLM logging object (``data["litellm_logging_obj"]``) into every attempt of a request, and
# that object fires ``async_log_failure_event`` once (``Logging.should_run_logging``: ``has_logged_async_failure``).
# So only a request's FIRST failed attempt reached the callbacks: the other deployments it tried were neither cooled
# nor blocked for the other workers, and the next request tried them again (1, 2, 3, 4 attempts over 4 requests with
# every deployment down). The SDK Router makes a logging object per attempt and is not affected. In the proxy the
# handler books each failed attempt itself as it leaves the Router's attempt; ``booked`` in the request's state
# makes whichever comes first (this or LiteLLM's event) the only booking.

_ATTEMPTS_MARK = "_router_plugin_book_attempts"


def _book_every_attempt(router: Any, installed: Any) -> None:
    if router.__dict__.get(_ATTEMPTS_MARK) is installed:
        return
    inner = router.__dict__.get("_router_plugin_attempt_inner") or router._acompletion
    router.__dict__["_router_plugin_attempt_inner"] = inner

    async def _acompletion(model: str, messages: list, **kwargs: Any):
        try:
            return await inner(model=model, messages=messages, **kwargs)
        except Exception as exc:
            if getattr(exc, "llm_provider", None) != "router_plugin":  # not the plugin's own refusal
                await _book_failed_attempt(installed, kwargs, exc)
            raise

    router._acompletion = _acompletion
    router.__dict__[_ATTEMPTS_MARK] = installed


async def _book_failed_attempt(installed: Any, kwargs: Mapping[str, Any], exc: BaseException) -> None:
    metadata = None
    for name in ("metadata", "litellm_metadata"):
        if isinstance(kwargs.get(name), dict) and isinstance(kwargs[name].get(METADATA_KEY), dict):
            metadata = kwargs[name]
            break
    state = metadata.get(METADATA_KEY) if metadata is not None else None
    if not state or state.get("booked") or not state.get("deployment_id"):
        return
    event = {"litellm_params": {"metadata": metadata, "model_info": {"id": state["deployment_id"]}},
             "exception": exc, "stream": bool(kwargs.get("stream"))}
    try:
        await installed.callbacks.async_log_failure_event(event, None, None, None)
    except Exception as err:  # bookkeeping never changes what the caller gets
        log.warning("router_plugin: could not book a failed attempt: %s", err)


# ---- the routing decision in the pre-call hook (issue 18 item 3) ------------------------------------------------
#
# A refusal used to be decided inside the Router: the proxy built the request, the Router ran its fallback and retry
# wrappers around the strategy, formatted a traceback for its failure alert and appended its fallback note, and only
# then did the proxy turn the exception into a 429. Under a retry storm of over-quota traffic that was most of what
# the proxy did. Now the proxy handler's pre-call hook runs the strategy's walk itself (the same walk, the same
# atomic reservation, the same store): a refusal is raised from the hook with the exception the Router would have
# raised, message included, and never enters the Router; a request that got a deployment carries the decision in its
# metadata (``EARLY_KEY``) and the Router's first pick returns that deployment without a second walk, so a served
# request still costs one routing decision. Whenever the Router would do more than pick (fallbacks configured, a
# group name it resolves itself, another call type), the hook leaves the request to it, unchanged.
#
# A request that got its pick but failed before the Router took it (a later hook, a guardrail) gets its reservation
# back in the failure hook (``release_early``), as an attempt that was never sent.

_EARLY_MARK = "_router_plugin_takes_early_pick"
_EARLY_CALL_TYPES = frozenset({"completion", "acompletion"})
_FALLBACK_KEYS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")  # per-request keys


def _take_early_picks(router: Any, installed: Any) -> None:
    """The Router's async pick returns the pre-call hook's decision (once, for its own group) before walking.

    The wrapper is bound to the strategy itself, so the installer still sees its strategy installed."""
    import types

    current = router.__dict__.get("async_get_available_deployment")
    strategy = getattr(installed, "guard", None) or installed.strategy  # what the installer registered (hooks.py)
    if getattr(current, "__self__", None) is not strategy:
        return  # not the 1.108 pick (or not ours yet): no early decisions, the hook leaves requests to the Router
    if getattr(getattr(current, "__func__", None), _EARLY_MARK, False):
        return
    inner = current

    async def async_get_available_deployment(self, model, messages=None, input=None, specific_deployment=False,
                                             request_kwargs=None):
        picked = _early_pick(router, installed, model, request_kwargs)
        if picked is not None:
            return picked
        return await inner(model, messages=messages, input=input, specific_deployment=specific_deployment,
                           request_kwargs=request_kwargs)

    setattr(async_get_available_deployment, _EARLY_MARK, True)
    router.async_get_available_deployment = types.MethodType(async_get_available_deployment, strategy)


def _early_pick(router: Any, installed: Any, model: str, request_kwargs: Any) -> dict | None:
    """The hook's deployment, once, for the call it was decided for: its state goes back into the request's
    metadata (the stream guard starts every call with a fresh record) as the walk would have written it."""
    if not isinstance(request_kwargs, dict):
        return None
    for name in ("metadata", "litellm_metadata"):
        meta = request_kwargs.get(name)
        if not (isinstance(meta, dict) and EARLY_KEY in meta):
            continue
        early = meta.pop(EARLY_KEY)
        if not isinstance(early, dict) or early.get("taken"):
            return None
        early["taken"] = True  # the dict is shared with any copy of the metadata (release_early reads it)
        state = meta.get(METADATA_KEY)
        fresh = not (isinstance(state, Mapping) and state.get("deployment_id")) or \
            (state.get("deployment_id") == early.get("deployment_id") and state.get("attempts") == 1)
        if not (fresh and early.get("group") == model and early.get("owner") == installed.strategy.owner
                and not meta.get(FAILED_KEY)):
            return None
        for deployment in router.get_model_list(model_name=model) or []:
            if str((deployment.get("model_info") or {}).get("id")) == early["deployment_id"]:
                if not isinstance(state, dict):
                    state = meta[METADATA_KEY] = {}
                state.clear()
                state.update(early["state"])
                return deployment
        return None
    return None


def _early_eligible(router: Any, data: Any, call_type: Any) -> bool:
    if call_type not in _EARLY_CALL_TYPES or not isinstance(data, dict):
        return False
    model = data.get("model")
    if not isinstance(model, str) or not isinstance(data.get("messages"), list):
        return False
    if any(data.get(k) for k in (*_FALLBACK_KEYS, "disable_fallbacks", "specific_deployment", "mock_response")):
        return False
    if model in (getattr(router, "model_group_alias", None) or {}):
        return False  # the Router resolves the name itself
    fallbacks = getattr(router, "fallbacks", None) or []
    if any(isinstance(f, Mapping) and (model in f or "*" in f) for f in fallbacks):
        return False  # the Router would try another group after a refusal: let it decide
    if fallbacks and not all(isinstance(f, Mapping) for f in fallbacks):
        return False
    current = router.__dict__.get("async_get_available_deployment")
    if not getattr(getattr(current, "__func__", None), _EARLY_MARK, False):
        return False  # the Router's pick would not take the decision: deciding here would reserve twice
    return bool(router.get_model_list(model_name=model))


async def decide_early(installed: Any, data: Any, call_type: Any) -> None:
    """Run the strategy's walk for ``data`` now: raise its refusal (with the Router's own message suffix), or leave
    the chosen deployment for the Router's first pick. Does nothing when the Router must decide (see above)."""
    if installed is None:
        return
    strategy = installed.strategy
    router = getattr(strategy.router, "real", strategy.router)  # the Router itself, not its RouterView
    if not _early_eligible(router, data, call_type):
        return
    model = data["model"]
    try:
        pick = (getattr(installed, "guard", None) or strategy).async_get_available_deployment  # as the Router's pick
        picked = await pick(model, messages=data["messages"], request_kwargs=data)
    except Exception as exc:
        import litellm

        if litellm.expose_router_debug_in_errors and hasattr(exc, "message"):
            exc.message += _router_note(router, model)
        raise
    meta = _state_holder(data)
    state = meta.get(METADATA_KEY) if meta is not None else None
    if meta is not None and isinstance(state, Mapping) and state.get("deployment_id"):
        meta[EARLY_KEY] = {"group": model, "deployment_id": str(state["deployment_id"]), "owner": strategy.owner,
                           "state": dict(state)}
    else:  # pragma: no cover - the walk always records its choice
        log.warning("router_plugin: the pre-call decision for %s left no state; the Router decides again", model)
        del picked


def _router_note(router: Any, model: str) -> str:
    """What the Router's fallback wrapper appends to the message of an error it gives up on, for a group without
    a fallback (litellm/router.py ``async_function_with_fallbacks``)."""
    from litellm.router_utils.common_utils import format_fallback_outcome_message, format_no_fallback_group_message

    fallbacks = getattr(router, "fallbacks", None)
    if fallbacks:
        return format_no_fallback_group_message((model,), fallbacks)
    return format_fallback_outcome_message(model, None, "")


async def release_early(installed: Any, request_data: Any, exc: BaseException) -> None:
    """The request failed before the Router took the pre-call hook's pick: give its reservation back."""
    meta = _state_holder(request_data)
    if installed is None or meta is None or EARLY_KEY not in meta:
        return
    early = meta.pop(EARLY_KEY, None)
    if not isinstance(early, dict) or early.get("taken"):
        return  # the Router took it: its attempt is booked like any other
    early["taken"] = True
    state = dict(early.get("state") or {})
    await _book_failed_attempt(installed, {"metadata": {METADATA_KEY: state}}, exc)


def _state_holder(data: Any) -> dict | None:
    if not isinstance(data, dict):
        return None
    for name in ("metadata", "litellm_metadata"):
        if isinstance(data.get(name), dict):
            return data[name]
    return None


# ---- health checks -----------------------------------------------------------------------------------------------
#
# LiteLLM's /health and its background health checks call ``litellm.ahealth_check(litellm_params, ...)`` for every
# deployment (proxy/health_check.py ``_run_model_health_check``): one real completion each, outside the Router, so
# outside the strategy and the callbacks. On a free tier that is the expensive way to ask: four deployments polled
# every minute spend 4 of OpenRouter's 50 requests a day per poll, and the calls are not counted, so the next burst
# meets provider 429s. The plugin already knows, for every worker, what a probe would find out: whether each
# deployment can take a request now, is out of quota (and until when), or is cooling down after failures or
# quarantined as gone. So a metered deployment's health check is answered from the store, with no upstream call:
#   can take a request                      -> healthy
#   out of quota (a counter full/blocked)   -> healthy, with "quota-limited until ..." (nothing is broken)
#   cooling down / quarantined by failures  -> unhealthy, with the recorded reason and when it ends
# Deployments the plugin does not meter (a paid model with allow_paid and no limits) keep LiteLLM's real check.

_HEALTH_MARK = "_router_plugin_health"


def guard_health_checks() -> None:
    """Route ``litellm.ahealth_check`` through :func:`health_from_store` (idempotent, per process)."""
    import litellm

    current = litellm.ahealth_check
    if getattr(current, _HEALTH_MARK, False):
        return

    async def ahealth_check(model_params: dict, mode: str | None = None, prompt: str | None = None,
                            input: list | None = None):
        answer = await health_from_store(model_params)
        if answer is not None:
            return answer
        return await current(model_params, mode=mode, prompt=prompt, input=input)

    setattr(ahealth_check, _HEALTH_MARK, True)
    ahealth_check.__wrapped__ = current  # type: ignore[attr-defined]
    litellm.ahealth_check = ahealth_check


async def health_from_store(model_params: Mapping[str, Any], handler: "ProxyHandler | None" = None
                            ) -> dict[str, Any] | None:
    """The health of the metered deployment ``model_params`` describes, from the store; None: not the plugin's."""
    handler = handler or proxy_handler
    try:
        installed = handler._installed or handler.ensure_installed()
        if installed is None:  # the proxy has no Router yet: nothing to answer for, and nothing to send
            return {"error": "router_plugin: the proxy's router is not built yet; not probed upstream"}
        deployment = _deployment_of(installed.strategy.router, model_params)
        if deployment is None:
            return None
        plan = installed.plans.plan(deployment)
        if not plan.metered:
            return None
        outcome = await installed.store.peek(plan)
    except Exception as exc:  # the store cannot answer: say so, and still send nothing upstream
        return {"error": f"router_plugin: quota store unavailable ({type(exc).__name__}); not probed upstream"}
    until = getattr(outcome, "until_ms", None)
    if until is None:  # a reservation would succeed now
        return {"router_plugin": "can take a request (answered from the plugin's counters, not probed upstream)"}
    at = time.strftime("%H:%M:%S UTC", time.gmtime(until / 1000)) if until > 0 else "never (larger than the limit)"
    if outcome.counter is None:  # the model itself is set aside: it failed, or is gone
        return {"error": f"router_plugin: {plan.model} set aside ({_ascii(str(outcome.why))}) until {at}"}
    return {"router_plugin": f"quota-limited: {outcome.counter.label} {outcome.why} until {at} "
                             "(answered from the plugin's counters, not probed upstream)"}


def _deployment_of(router: Any, params: Mapping[str, Any]) -> dict | None:
    """The Router deployment whose ``litellm_params`` ``params`` are (a health check gets a copy, no model_info)."""
    fields = ("model", "api_base", "api_key")
    want = tuple(str(params.get(f) or "") for f in fields)
    best = None
    for deployment in router_api.all_deployments(router) if router is not None else []:
        lp = deployment.get("litellm_params") or {}
        have = tuple(str(lp.get(f) or "") for f in fields)
        if have == want:
            return deployment
        if best is None and have[:2] == want[:2]:
            best = deployment
    return best


def response_headers(state: Mapping[str, Any]) -> dict[str, str]:
    """The ``x-router-plugin-*`` headers for one request's ``metadata["router_plugin"]``.

    No deployment chosen (refused at once, or the request never reached routing): deployment ``none``, attempts
    ``0`` and remaining ``0`` — nothing in the chain could take it; ``Retry-After`` says when one can.
    """
    remaining = state.get("remaining") if isinstance(state.get("remaining"), Mapping) else {}
    model = state.get("model")
    attempts = state.get("attempts") or 0
    return {
        H_DEPLOYMENT: _ascii(str(model)) if model else "none",
        H_ATTEMPTS: str(int(attempts)),
        H_REMAINING_MINUTE: _pick(remaining, _MINUTE_LIMITS, model),
        H_REMAINING_DAY: _pick(remaining, _DAY_LIMITS, model),
    }


def _pick(remaining: Mapping[str, Any], names: tuple[str, ...], model: Any) -> str:
    for name in names:
        if name in remaining:
            return str(int(remaining[name]))
    # An unmetered deployment (a paid model with allow_paid and no limits) has no counters.
    return "unlimited" if model else "0"


def _state(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        return {}
    for name in ("metadata", "litellm_metadata"):
        meta = data.get(name)
        if isinstance(meta, Mapping) and isinstance(meta.get(METADATA_KEY), Mapping):
            return meta[METADATA_KEY]
    return {}


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    try:
        for key, value in dict(headers).items():
            if str(key).lower() == name and value not in (None, ""):
                return str(value)
    except Exception:
        return None
    return None


def priority_into_metadata(data: Any) -> None:
    """The ``x-router-plugin-priority`` header as the request's ``metadata.priority`` (the body's value wins), marked
    so that a bad value's 400 names the header. The virtual key's / team's ``router_plugin_priority`` and the share
    identity need nothing here: LiteLLM puts ``user_api_key_metadata`` / ``user_api_key_team_metadata`` and
    ``user_api_key_hash`` / ``_user_id`` / ``_team_id`` into the same metadata (and drops any a client sent), and
    priority.py reads them there."""
    if not isinstance(data, dict):
        return
    meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else data.get("litellm_metadata")
    if not isinstance(meta, dict):
        meta = data.setdefault("metadata", {})
    meta.pop(PRIORITY_SOURCE_KEY, None)  # only this hook says where the priority came from
    request = data.get("proxy_server_request")
    value = _header(request.get("headers") if isinstance(request, Mapping) else None, PRIORITY_HEADER) \
        or _header(meta.get("headers"), PRIORITY_HEADER)
    if value is not None and meta.get(PRIORITY_KEY) is None:
        meta[PRIORITY_KEY] = value
        meta[PRIORITY_SOURCE_KEY] = "header"


def _upstream_retry_after(exc: BaseException) -> str | None:
    if isinstance(exc, QuotaExhaustedError):
        return None
    raw = getattr(exc, "litellm_response_headers", None)
    value = _header(raw, "retry-after")
    if value is not None:
        return value
    provider = getattr(exc, "llm_provider", None)
    now = time.time()
    try:
        fact = providers.classify_exception(provider if isinstance(provider, str) else "", exc, now)
    except Exception:
        return None
    until = getattr(fact, "until", None)
    if isinstance(until, (int, float)) and until > now:
        return str(max(1, math.ceil(until - now)))
    return None


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def _in_proxy_with_config() -> bool:
    import sys

    proxy_server = sys.modules.get("litellm.proxy.proxy_server")
    if proxy_server is None:  # imported outside the proxy (a test, a script): settings are read when first needed
        return False
    return bool(os.environ.get(CONFIG_ENV) or getattr(proxy_server, "user_config_file_path", None))


def _refuse(exc: ConfigError) -> None:
    """The proxy must not start on a bad config: one line on stderr (not through logging, whose LiteLLM redaction
    filter mangles ``...api_key: environment variable X is not set``), then leave without a traceback: any exception,
    SystemExit included, reaches Starlette's lifespan, which prints its traceback. Under several workers the uvicorn
    parent would restart the worker for ever: ask it to stop (SIGTERM) first."""
    import multiprocessing
    import signal
    import sys

    sys.stderr.write(f"router_plugin: the proxy cannot start: {exc}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid and _is_proxy_supervisor(parent.pid):
        try:
            os.kill(parent.pid, signal.SIGTERM)
        except OSError:
            pass
    os._exit(3)


def _is_proxy_supervisor(pid: int) -> bool:
    """The uvicorn parent of ``litellm --num_workers N`` (never signal a process that is not the proxy's own)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return False
    return "litellm" in cmdline or "uvicorn" in cmdline


proxy_handler = ProxyHandler()
_startup_task: "asyncio.Task | None" = None
if _in_proxy_with_config():
    # Imported by the proxy while it loads its config: validate now, so a bad `router_plugin:` section (or a paid
    # model, or an unset key) stops the proxy at startup with the file and key named, not on the first request;
    # then install as soon as the proxy's Router exists (the config is loaded inside the worker's event loop).
    try:
        proxy_handler.settings()
    except ConfigError as _exc:
        _refuse(_exc)
    guard_health_checks()
    try:
        _startup_task = asyncio.get_running_loop().create_task(proxy_handler.install_when_ready())
    except RuntimeError:  # no running loop: the pre-call hook installs on the first request
        pass


# ---- fast refusals, in front of the proxy app (issue 18 item 3) --------------------------------------------------
#
# Deciding a refusal in the pre-call hook (above) still leaves most of its cost to LiteLLM: ~20 ASGI middlewares,
# Starlette's linear route matching over ~1,000 routes, FastAPI's dependency solving and ``user_api_key_auth``, the
# request setup, then ``handle_llm_api_exception`` and every callback's failure hook. Measured per worker: a refusal
# cost ~8,800 µs of CPU against ~11,700 µs for a served request.
#
# ``FastRefusals`` is an ASGI layer put in front of the proxy app's middleware stack, in every worker. It answers
# only for a caller LiteLLM has already authenticated for that model group: the pre-call hook (which runs after
# ``user_api_key_auth``) remembers, for ``_FAST_TTL_S``, the caller (a SHA-256 of its ``Authorization`` header, client
# address and ``X-Forwarded-For``: the layer sets it for the request in ``_CALLER``) with the group it asked for and
# what the admission reads from the key (priority floor, share identity; priority.py). Any other request passes
# through untouched, its body replayed: another path or method, no ``Authorization`` or another auth header, an
# unknown caller, a body that is not a JSON chat request the hook would decide itself (``_early_eligible``), waiting
# allowed (``max_wait_s > 0``), a store not in use. For a known caller the layer builds the walk's Asks exactly as
# the strategy does (``_Request.asks``) and asks the store ONE dry-run round trip at the request's cost
# (``QuotaStore.peek_first``, nothing reserved). A candidate fits: pass through (the hook walks and reserves as
# before). None fits: the strategy's own refusal (``_Request.refusal``: same message, same events, so the plugin's
# metrics count it) rendered as the proxy renders the hook's (same status, headers through this handler's hooks and
# LiteLLM's ``get_custom_headers``, body through the app's ``ProxyException`` handler).
#
# The TTL bounds how long a key LiteLLM stops accepting (revoked, expired, over its budget, its model access
# removed) can still be told "429, out of quota" instead of LiteLLM's own 401/403 in one worker: 10 s, below
# LiteLLM's own in-memory cache of an authenticated key (``user_api_key_cache_ttl``, 60 s). A fast refusal never
# renews its caller's entry: at least every 10 s one request of a refused caller goes through LiteLLM's auth again.
# Not seen by a fast refusal: LiteLLM's own failure callbacks and other callbacks' hooks (README "Refusals through
# the proxy"); ``router_plugin: {proxy: {fast_refusals: false}}`` turns the layer off.

_FAST_TTL_S = 10.0
_FAST_MAX_CALLERS = 10_000
_FAST_MAX_BODY = 1 << 20  # larger bodies pass through
_FAST_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
#: Other headers LiteLLM may authenticate with: a request carrying one is left to LiteLLM.
_OTHER_AUTH = frozenset({b"api-key", b"x-api-key", b"x-litellm-api-key", b"x-goog-api-key"})
#: What the admission reads from the metadata LiteLLM derives from the key (priority.py).
_AUTH_FIELDS = ("user_api_key_metadata", "user_api_key_team_metadata", "user_api_key_hash", "user_api_key",
                "user_api_key_user_id", "user_api_key_team_id", "user_api_key_alias")
_FAST_MARK = "_router_plugin_fast_refusals"
#: Headers of a refusal the endpoint itself writes (the rest, but x-litellm-* / x-router-plugin-*, are the
#: middlewares').
_INNER_HEADERS = frozenset({b"content-length", b"content-type", b"date", b"server", b"retry-after",
                            b"x-should-retry", b"content-encoding", b"transfer-encoding"})

class _Call:
    """The request the layer let through: its caller, and the group the pre-call hook saw (set by the hook)."""

    __slots__ = ("caller", "group")

    def __init__(self, caller: str):
        self.caller, self.group = caller, None


_CALLER: "contextvars.ContextVar[_Call | None]" = contextvars.ContextVar("router_plugin_caller", default=None)


@dataclasses.dataclass
class _Known:
    fields: dict
    auth: Any  # LiteLLM's UserAPIKeyAuth of the caller (its limits and spend go into LiteLLM's headers)
    until: float
    refused: bool = False  # the last reply for this caller and group was a refusal: check the next one here


class FastRefusals:
    """The ASGI layer in front of the proxy app's middleware stack (see above)."""

    def __init__(self, app: Any, handler: "ProxyHandler", other_auth: frozenset = _OTHER_AUTH):
        self.app = app
        self.handler = handler
        self.other_auth = other_auth
        self.known: dict[str, dict[str, _Known]] = {}
        self.answered = 0  # fast refusals answered by this worker
        self.outer_headers: list | None = None  # what the middlewares added to the hook's last refusal
        setattr(self, _FAST_MARK, True)

    # -- the memo ---------------------------------------------------------------------------------------------

    def remember(self, caller: str, group: str, fields: dict, auth: Any) -> None:
        now = time.monotonic()
        if caller not in self.known and len(self.known) >= _FAST_MAX_CALLERS:
            for key in [k for k, groups in self.known.items() if all(e.until <= now for e in groups.values())]:
                del self.known[key]
            if len(self.known) >= _FAST_MAX_CALLERS:
                self.known.clear()
        groups = self.known.setdefault(caller, {})
        last = groups.get(group)
        groups[group] = _Known(fields, auth, now + _FAST_TTL_S, last is not None and last.refused)

    def lookup(self, caller: str, group: Any) -> _Known | None:
        groups = self.known.get(caller)
        entry = groups.get(group) if groups is not None and isinstance(group, str) else None
        if entry is None:
            return None
        if entry.until <= time.monotonic():
            del groups[group]
            return None
        return entry if entry.refused else None

    def caller_of(self, scope: Mapping[str, Any]) -> str | None:
        auth = forwarded = None
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                if auth is not None:
                    return None
                auth = value
            elif name in self.other_auth:
                return None
            elif name == b"x-forwarded-for":
                forwarded = value
        if not auth or not auth[:7].lower() == b"bearer ":
            return None
        client = scope.get("client")
        host = str(client[0]).encode() if client else b""
        return hashlib.sha256(b"\0".join((auth, host, forwarded or b""))).hexdigest()

    # -- ASGI ---------------------------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in _FAST_PATHS:
            return await self.app(scope, receive, send)
        caller = self.caller_of(scope)
        if caller is None:
            return await self.app(scope, receive, send)
        call = _Call(caller)
        token = _CALLER.set(call)  # the pre-call hook remembers the caller once LiteLLM authenticated it
        try:
            groups = self.known.get(caller)
            if not groups or not any(e.refused for e in groups.values()):  # a served caller pays nothing more
                return await self.app(scope, receive, self._watch(send, call))
            messages, body = await _read_body(receive)
            response = None
            if body is not None and self.outer_headers is not None:
                try:
                    response = await self._refusal(scope, caller, body)
                except Exception as exc:  # never worse than without the layer: LiteLLM decides
                    log.debug("router_plugin: fast refusal skipped: %s: %s", type(exc).__name__, exc)
            if response is not None:
                self.answered += 1
                return await response(scope, _replay(messages, receive), self._outer(send))
            return await self.app(scope, _replay(messages, receive), self._watch(send, call))
        finally:
            _CALLER.reset(token)

    def _watch(self, send: Any, call: _Call) -> Any:
        """``send`` that notes whether the reply LiteLLM gave was the plugin's refusal (then the caller's next
        request for that group is checked here), and learns from one the headers LiteLLM's middlewares add to every
        response (security headers, Vary): a fast refusal carries the same."""
        async def watched(message):
            if message.get("type") == "http.response.start":
                headers = message.get("headers") or ()
                refused = message.get("status") in (429, 503) and (b"x-router-plugin-deployment", b"none") in headers
                if refused:
                    self.outer_headers = [(k, v) for k, v in headers if k not in _INNER_HEADERS
                                          and not k.startswith((b"x-litellm-", b"x-router-plugin-"))]
                entry = self.known.get(call.caller, {}).get(call.group) if call.group is not None else None
                if entry is not None:
                    entry.refused = refused
            await send(message)

        return watched

    def _outer(self, send: Any) -> Any:
        outer = self.outer_headers or []

        async def sent(message):
            if message.get("type") == "http.response.start" and outer:
                headers = list(message.get("headers") or ())
                have = {k for k, _ in headers}
                message = {**message, "headers": headers + [(k, v) for k, v in outer if k not in have]}
            await send(message)

        return sent

    async def _refusal(self, scope: Mapping[str, Any], caller: str, body: bytes) -> Any:
        try:
            request = json.loads(body)
        except ValueError:
            return None
        if not isinstance(request, dict):
            return None
        known = self.lookup(caller, request.get("model"))
        installed = self.handler._installed
        if known is None or installed is None:
            return None
        priority = None
        for name, value in scope.get("headers") or ():
            if name == PRIORITY_HEADER.encode():
                priority = value.decode("latin-1")
        found = await fast_refusal(installed, request, known.fields, priority)
        if found is None:
            return None
        exc, data = found
        return await self._render(scope, data, exc, known)

    async def _render(self, scope: Mapping[str, Any], data: dict, exc: Exception, known: _Known) -> Any:
        """The response the proxy sends for ``exc`` raised by the pre-call hook: ``handle_llm_api_exception``'s
        headers (the exception's, LiteLLM's ``get_custom_headers``, this handler's failure and header hooks) and
        the app's ``ProxyException`` handler's body."""
        import uuid

        from litellm.proxy import common_request_processing as crp
        from litellm.proxy import proxy_server  # noqa: F811
        from starlette.requests import Request

        handler = self.handler
        data["litellm_call_id"] = str(uuid.uuid4())
        await handler.async_post_call_failure_hook(data, exc, known.auth)
        headers = dict(getattr(exc, "headers", None) or {})
        headers.update(crp.ProxyBaseLLMRequestProcessing.get_custom_headers(
            user_api_key_dict=known.auth, call_id=data["litellm_call_id"], model_id=None,
            version=None, response_cost=0,  # the chat endpoint passes no version
            model_region=getattr(known.auth, "allowed_model_region", ""), request_data=data,
            timeout=getattr(exc, "timeout", None), litellm_logging_obj=None, read_timing_from_logging_obj=False))
        headers.update(await handler.async_post_call_response_headers_hook(data, known.auth, None))
        safe = {k: v if isinstance(v, str) else str(v) for k, v in headers.items()
                if k.lower() not in crp.UNSAFE_PROXY_RESPONSE_HEADERS}
        code = int(exc.status_code)
        message = getattr(exc, "message", str(exc))
        proxy_exc = crp.ProxyException(
            message=crp.redact_internal_details_from_client_message(crp.strip_bug_report_notice(message)),
            type=crp.openai_error_type(exc, code), param=crp.openai_error_param(exc),
            openai_code=getattr(exc, "code", None), code=code,
            provider_specific_fields=getattr(exc, "provider_specific_fields", None), headers=safe)
        return await proxy_server.openai_exception_handler(Request(dict(scope)), proxy_exc)


async def _read_body(receive: Any) -> tuple[list, bytes | None]:
    """The request's ASGI messages (to replay) and its body; None when it is too large or the client left."""
    messages, chunks, size = [], [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message.get("type") != "http.request":
            return messages, None
        chunk = message.get("body") or b""
        size += len(chunk)
        chunks.append(chunk)
        if size > _FAST_MAX_BODY:
            return messages, None
        if not message.get("more_body"):
            return messages, b"".join(chunks)


def _replay(messages: list, receive: Any) -> Any:
    pending = list(messages)

    async def replayed():
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def fast_refusal(installed: Any, request: dict, fields: Mapping[str, Any], priority_header: str | None
                       ) -> tuple[Exception, dict] | None:
    """The refusal the pre-call hook would raise for ``request`` (a chat body) from a caller whose key-derived
    metadata is ``fields``, with the request data the failure hooks read; None whenever the hook must decide
    (something fits, waiting allowed, anything unusual). The one store call writes nothing."""
    from ..limits import SCHEMA_FIELDS
    from ..priority import priority_problem
    from ..request_shape import problem as shape_problem
    from ..store import QuotaStore, Reservation
    from .. import routing
    from .strategy import _Request

    strategy = installed.strategy
    settings = strategy.settings
    if settings.max_wait_s > 0 or (strategy.ready is not None
                                   and not (strategy.is_ready is not None and strategy.is_ready())):
        return None
    store = installed.store
    guard = getattr(store, "guard", None)
    if guard is not None and not guard.reachable:
        return None  # the local limiter answers while Redis is away: the hook decides
    body_meta = request.get("metadata")
    if (body_meta is not None and not isinstance(body_meta, dict)) or "litellm_metadata" in request:
        return None
    metadata = {k: (dict(v) if isinstance(v, dict) else v) for k, v in fields.items()}
    if body_meta and body_meta.get(PRIORITY_KEY) is not None:
        metadata[PRIORITY_KEY] = body_meta[PRIORITY_KEY]
    elif priority_header is not None:
        metadata[PRIORITY_KEY] = priority_header
        metadata[PRIORITY_SOURCE_KEY] = "header"
    data = {**request, "metadata": metadata}
    router = getattr(strategy.router, "real", strategy.router)
    if not _early_eligible(router, data, "acompletion") or any(data.get(n) is not None for n in SCHEMA_FIELDS):
        return None
    model, messages = data["model"], data["messages"]
    if shape_problem(messages, data, chat=True) or priority_problem(metadata):
        return None
    walk = _Request(strategy, model, router.get_model_list(model_name=model), messages, data)
    asks = walk.asks()
    if not asks:
        return None
    started = time.perf_counter()
    outcome = await QuotaStore.peek_first(store, asks)
    if isinstance(outcome, Reservation) or not outcome:
        return None
    blocked = walk.blocked_from(outcome, asks, time.perf_counter() - started)
    if routing.never_fits(model, {p.deployment_id for _, p in walk.pairs}, walk.skipped, blocked, walk.failures,
                          walk.tokens, walk.prompt_tokens, walk.max_tokens) is not None:
        return None  # the hook answers its 400
    if walk.wait_before_retry(blocked, time.monotonic()) is not None:
        return None
    exc = walk.refusal(blocked)
    import litellm

    if litellm.expose_router_debug_in_errors and hasattr(exc, "message"):
        exc.message += _router_note(router, model)
    return exc, data


def install_fast_refusals(handler: "ProxyHandler") -> "FastRefusals | None":
    """Put ``FastRefusals`` in front of the proxy app's middleware stack (idempotent). Starlette builds
    ``app.middleware_stack`` on the app's first call (the lifespan, before this handler is imported) and calls it
    for every request; ``app.add_middleware`` refuses once it is built. None: not in the proxy, or not yet built."""
    import sys

    proxy_server = sys.modules.get("litellm.proxy.proxy_server")
    app = getattr(proxy_server, "app", None) if proxy_server is not None else None
    current = getattr(app, "middleware_stack", None)
    if current is None:
        return None
    if getattr(current, _FAST_MARK, False):
        return current
    other = set(_OTHER_AUTH)
    custom = (getattr(proxy_server, "general_settings", None) or {}).get("litellm_key_header_name")
    if isinstance(custom, str) and custom:
        other.add(custom.lower().encode())
    layer = FastRefusals(current, handler, frozenset(other))
    app.middleware_stack = layer
    return layer


def _remember_caller(data: Any, user_api_key_dict: Any, call_type: Any) -> None:
    """Pre-call hook (LiteLLM authenticated the request): the fast layer may answer this caller's next refusals
    for this group. Only when the group is the one the body named (a key's model alias renames it)."""
    call = _CALLER.get()
    if call is None or call_type not in _EARLY_CALL_TYPES or not isinstance(data, dict):
        return
    import sys

    proxy_server = sys.modules.get("litellm.proxy.proxy_server")
    layer = getattr(getattr(proxy_server, "app", None), "middleware_stack", None)
    if not getattr(layer, _FAST_MARK, False):
        return
    model = data.get("model")
    request = data.get("proxy_server_request")
    body = request.get("body") if isinstance(request, Mapping) else None
    meta = _state_holder(data)
    if not isinstance(model, str) or not isinstance(body, Mapping) or body.get("model") != model or meta is None:
        return
    call.group = model
    layer.remember(call.caller, model, {n: meta[n] for n in _AUTH_FIELDS if n in meta}, user_api_key_dict)
