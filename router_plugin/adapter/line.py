"""Which LiteLLM line is running, decided in ONE place, and what each line offers the plugin.

Prototype for issue 15 (see docs/adapter.md). Nothing outside ``router_plugin.adapter`` imports this yet.

Every capability the plugin needs is reached through one of the hooks named in ``NEEDS``; ``check(router)``
verifies at install time that the running LiteLLM has each of them and raises :class:`MissingHookError` naming
the LiteLLM version and the hook — the plugin never runs silently without one.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from typing import Any

from ..errors import RouterPluginError

#: Compromised releases: never run on them, whatever the range says.
BANNED = frozenset({"1.82.7", "1.82.8", "1.107.0"})
#: (major, minor) lines the adapter knows, with the lowest patch verified on each.
LINES = {(1, 108): 7, (1, 109): 3, (1, 110): 2}


class MissingHookError(RouterPluginError):
    """The running LiteLLM lacks a hook the plugin needs; the message names the version and the hook."""


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
        return f"{self.key[0]}.{self.key[1]}"


def _parse(version: str) -> tuple[int, int, int]:
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)", version)
    if not m:
        raise MissingHookError(f"router_plugin: cannot read the LiteLLM version {version!r}; "
                               "install a supported release (litellm 1.108.7+ below 1.109, 1.109.3+, or 1.110.2+)")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def detect(version: str | None = None) -> Line:
    """The running line (or ``version``'s), refused at once when it is banned or not a line the adapter knows."""
    version = version or importlib.metadata.version("litellm")
    if version in BANNED:
        raise MissingHookError(f"router_plugin: LiteLLM {version} is a compromised release; never run it "
                               "(pip install 'litellm>=1.108.7,<1.109' or 'litellm>=1.110.2,<1.111')")
    release = _parse(version)
    lowest = LINES.get(release[:2])
    if lowest is None or release[2] < lowest:
        known = ", ".join(f"{a}.{b}.{p}+ (<{a}.{b + 1})" for (a, b), p in sorted(LINES.items()))
        raise MissingHookError(f"router_plugin: LiteLLM {version} is not a supported line; supported: {known}")
    return Line(version, release)


#: capability -> {"1.108" | "core" (1.109+): (hook description, predicate on the router)}. Public unless marked private.
NEEDS: dict[str, dict[str, tuple[str, Any]]] = {
    "routing strategy": {
        "1.108": ("Router.set_custom_routing_strategy", lambda r: callable(getattr(r, "set_custom_routing_strategy", None))),
        "core": ("Router.register_plugin", lambda r: callable(getattr(r, "register_plugin", None))),
    },
    "deployment list": {
        "1.108": ("Router.get_model_list / get_model_names", lambda r: callable(getattr(r, "get_model_list", None))),
        "core": ("Router.registry().deployments / names", lambda r: callable(getattr(r, "registry", None))),
    },
    "settings": {
        "1.108": ("Router attributes (disable_cooldowns, num_retries)", lambda r: hasattr(r, "disable_cooldowns")),
        "core": ("Router.apply(ChangeSet)", lambda r: callable(getattr(r, "apply", None))),
    },
    # 1.108 ends a stream with no provider finish reason as a synthetic "stop": only LiteLLM's inner wrapper
    # (reached through a PRIVATE member, the 1.108 LTS line only) tells the two apart. 1.109.3 and 1.110.2 raise
    # on their own (measured: docs/adapter_probes/probe_stream.py).
    "stream finish reason": {
        "1.108": ("Router._acompletion_streaming_iterator (private)",
                   lambda r: callable(getattr(r, "_acompletion_streaming_iterator", None))),
        "core": ("not needed: LiteLLM raises APIConnectionError on a stream with no finish reason", lambda r: True),
    },
}


def check(router: Any, line: Line | None = None, capabilities: tuple[str, ...] | None = None) -> Line:
    """Raise MissingHookError unless ``router`` has every hook the plugin needs on this line."""
    line = line or detect()
    for capability in capabilities or tuple(NEEDS):
        hook, present = NEEDS[capability]["core" if line.core else "1.108"]
        if not present(router):
            raise MissingHookError(f"router_plugin: LiteLLM {line.version} has no {hook} (needed for the "
                                   f"{capability}); this LiteLLM build is not supported — install litellm "
                                   "1.108.7+ (<1.109), 1.109.3+ or 1.110.2+")
    return line
