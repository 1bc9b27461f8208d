"""Which LiteLLM line is running, decided in ONE place, and what each line offers the plugin.

``detect()`` reads the LiteLLM version once and refuses, in one line, a compromised release or a release nobody ran
the plugin on. ``NEEDS`` lists every LiteLLM hook the plugin uses, per line; the private ones say "(private)".
``check(router)`` runs at install and raises :class:`MissingHookError` naming the LiteLLM version and the missing
hook: the plugin never runs silently without one.

Lines (docs/adapter.md): "1.108" is the LTS line with the proxy (1.108.7+); "core" is 1.109.3+ and 1.110.2+, where
``Router`` is a front over a core (``register_plugin``, ``registry()``, ``settings()``, ``apply()``).
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from typing import Any

from ..errors import RouterPluginError

#: Compromised releases: never run on them, whatever the range says.
BANNED = frozenset({"1.82.7", "1.82.8", "1.107.0"})
#: (major, minor) lines the adapter knows, with the lowest patch verified on each (1.109.0-2 and 1.110.0-1 were
#: never run here: refused, like pyproject.toml's range).
LINES = {(1, 108): 7, (1, 109): 3, (1, 110): 2}
SUPPORTED = "litellm>=1.108.7,<1.109 (SDK and proxy), or the SDK on >=1.109.3,<1.110 or >=1.110.2,<1.111"


class MissingHookError(RouterPluginError):
    """The running LiteLLM is not one the plugin runs on, or lacks a hook it needs; the message names both."""


@dataclass(frozen=True)
class Line:
    version: str  # e.g. "1.110.2"
    release: tuple[int, int, int]

    @property
    def key(self) -> tuple[int, int]:
        return self.release[:2]

    @property
    def core(self) -> bool:
        """True from 1.109 on: Router is a front over a core (register_plugin, registry(), settings(), apply())."""
        return self.key >= (1, 109)

    @property
    def name(self) -> str:
        return "core" if self.core else "1.108"


def _parse(version: str) -> tuple[int, int, int]:
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)", version)
    if not m:
        raise MissingHookError(f"router_plugin: cannot read the LiteLLM version {version!r}; install {SUPPORTED}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


_detected: Line | None = None


def detect(version: str | None = None) -> Line:
    """The running line (or ``version``'s), refused at once when it is banned or not a line the adapter knows."""
    global _detected
    if version is None and _detected is not None:
        return _detected
    raw = version or importlib.metadata.version("litellm")
    if raw in BANNED:
        raise MissingHookError(f"router_plugin: LiteLLM {raw} is a compromised release; never run it (install "
                               f"{SUPPORTED})")
    release = _parse(raw)
    lowest = LINES.get(release[:2])
    if lowest is None or release[2] < lowest:
        raise MissingHookError(f"router_plugin: LiteLLM {raw} is not a release router_plugin runs on; install "
                               f"{SUPPORTED}")
    line = Line(raw, release)
    if version is None:
        _detected = line
    return line


def _has(obj: Any, name: str) -> bool:
    return callable(getattr(obj, name, None))


def _router_module_has(name: str) -> bool:
    import litellm.router as router_module

    return callable(getattr(router_module, name, None))


#: capability -> {"1.108" | "core": (the hook, predicate on the router)}. Public unless marked "(private)".
#: A line missing from a capability does not need it.
NEEDS: dict[str, dict[str, tuple[str, Any]]] = {
    "routing strategy": {
        "1.108": ("Router.set_custom_routing_strategy", lambda r: _has(r, "set_custom_routing_strategy")),
        "core": ("Router.register_plugin", lambda r: _has(r, "register_plugin")),
    },
    "deployment list": {
        "1.108": ("Router.get_model_list / get_model_names", lambda r: _has(r, "get_model_list")),
        "core": ("Router.registry()", lambda r: _has(r, "registry")),
    },
    "settings": {
        "1.108": ("Router.disable_cooldowns / num_retries attributes", lambda r: hasattr(r, "disable_cooldowns")),
        "core": ("Router.apply(ChangeSet) / settings()", lambda r: _has(r, "apply") and _has(r, "settings")),
    },
    "per-attempt hooks": {
        "core": ("CustomLogger.async_pre_call_deployment_hook / async_post_call_failure_deployment_hook",
                 lambda r: _custom_logger_has("async_pre_call_deployment_hook",
                                              "async_post_call_failure_deployment_hook")),
    },
    "stream guard": {
        "1.108": ("Router.acompletion / Router.completion", lambda r: _has(r, "acompletion") and _has(r, "completion")),
        "core": ("Router.acompletion / Router.completion", lambda r: _has(r, "acompletion") and _has(r, "completion")),
    },
    # A malformed SSE event inside a guarded stream is skipped (streams._lenient_sse) instead of breaking the stream
    # (1.110.2 raises APIConnectionError on "data: [1,2,3]"; the guard would then continue the answer elsewhere).
    "malformed stream events skipped": {
        "1.108": ("BaseModelResponseIterator._string_to_dict_parser + openai Stream._iter_events (private)",
                  lambda r: _sse_parsers()),
        "core": ("BaseModelResponseIterator._string_to_dict_parser + openai Stream._iter_events (private)",
                 lambda r: _sse_parsers()),
    },
    # 1.108 only: what its public API cannot do (docs/adapter.md §1b-1d). The core lines do without (README table).
    "retry discipline (402 / context-400 / malformed-400 split, no Retry-After sleep)": {
        "1.108": ("Router.should_retry_this_error + Router._time_to_sleep_before_retry (private)",
                  lambda r: _has(r, "should_retry_this_error") and _has(r, "_time_to_sleep_before_retry")),
    },
    "per-attempt headers / first-token limit": {
        "1.108": ("Router._acompletion (private)", lambda r: _has(r, "_acompletion")),
    },
    "stream headers signal": {
        "1.108": ("litellm.router._aread_first_chunk (private)", lambda r: _router_module_has("_aread_first_chunk")),
    },
    # 1.108 ends a stream with no provider finish reason as a synthetic "stop": only LiteLLM's inner wrapper tells
    # the two apart. 1.109.3 and 1.110.2 raise APIConnectionError on such a stream themselves.
    "stream finish reason": {
        "1.108": ("Router._acompletion_streaming_iterator (private)",
                  lambda r: _has(r, "_acompletion_streaming_iterator")),
    },
    # The proxy's fast refusals (adapter/proxy.py FastRefusals): a layer put in front of the app's built middleware
    # stack, answering with the proxy's own header and error rendering. Checked only inside the proxy.
    "proxy fast refusals": {
        "1.108": ("Starlette app.middleware_stack + proxy_server.openai_exception_handler + "
                  "ProxyBaseLLMRequestProcessing.get_custom_headers / ProxyException / openai_error_type (private)",
                  lambda r: _fast_refusal_seams()),
    },
}


_FAST_REFUSAL_NAMES = ("ProxyBaseLLMRequestProcessing", "ProxyException", "UNSAFE_PROXY_RESPONSE_HEADERS",
                       "openai_error_type", "openai_error_param", "redact_internal_details_from_client_message",
                       "strip_bug_report_notice")


def _fast_refusal_seams() -> bool:
    import sys

    proxy_server = sys.modules.get("litellm.proxy.proxy_server")
    if proxy_server is None:  # not in the proxy: nothing to check
        return True
    from litellm.proxy import common_request_processing as crp

    return (hasattr(getattr(proxy_server, "app", None), "middleware_stack")
            and callable(getattr(proxy_server, "openai_exception_handler", None))
            and all(hasattr(crp, name) for name in _FAST_REFUSAL_NAMES)
            and callable(getattr(crp.ProxyBaseLLMRequestProcessing, "get_custom_headers", None)))


def _sse_parsers() -> bool:
    from litellm.llms.base_llm.base_model_iterator import BaseModelResponseIterator
    from openai import _streaming

    return ("_string_to_dict_parser" in BaseModelResponseIterator.__dict__
            and all("_iter_events" in c.__dict__ for c in (_streaming.Stream, _streaming.AsyncStream)))


def _custom_logger_has(*names: str) -> bool:
    from litellm.integrations.custom_logger import CustomLogger

    return all(_has(CustomLogger, n) for n in names)


def check(router: Any, line: Line | None = None) -> Line:
    """Raise MissingHookError unless ``router`` has every hook the plugin needs on this line."""
    line = line or detect()
    for capability, per_line in NEEDS.items():
        if line.name not in per_line:
            continue
        hook, present = per_line[line.name]
        if not present(router):
            raise MissingHookError(f"router_plugin: LiteLLM {line.version} has no {hook}, needed for the "
                                   f"{capability}; install {SUPPORTED}")
    return line
