"""Every error router_plugin raises, in one hierarchy.

    RouterPluginError
     +-- ConfigError          the config is wrong: names the file, the key, what is expected
     +-- StoreError           the quota store (Redis) cannot be reached or answered nonsense

Requests refused because no deployment has quota left raise ``QuotaExhaustedError`` (see
``router_plugin.adapter.strategy``), a ``litellm.RateLimitError`` so that LiteLLM and the proxy map it to HTTP 429.
"""

from __future__ import annotations


class RouterPluginError(Exception):
    """Base class of router_plugin's own errors."""


class ConfigError(RouterPluginError, ValueError):
    """A config problem: ``where`` is the file (or "<dict>"), ``key`` the dotted key path."""

    def __init__(self, where: str, key: str, problem: str, fix: str | None = None):
        self.where = where
        self.key = key
        self.problem = problem
        self.fix = fix
        text = f"{where}: {key}: {problem}"
        if fix:
            text += f" ({fix})"
        super().__init__(_one_line(text))


def _one_line(text: str) -> str:
    """A config key or value with a line break in it must not split the one-line error."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class StoreError(RouterPluginError):
    """The quota store failed; the message says which server (without credentials) and how to fix it."""
