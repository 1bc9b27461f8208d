"""router_plugin: quota-aware fallback chains over OpenRouter ``:free`` models and Groq for LiteLLM.

    router = router_plugin.build_router("configs/litellm_config.yaml")   # a litellm.Router, plugin installed
    router_plugin.install(my_router, {"redis_url": "redis://localhost:6379/0"})

Proxy users add one line to their LiteLLM config::

    litellm_settings:
      callbacks: router_plugin.proxy_handler
"""

from . import _env  # noqa: F401  (must run before litellm is imported anywhere below)
from .config import PluginConfig, Settings, load_config
from .errors import ConfigError, RouterPluginError, StoreError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "PluginConfig",
    "QuotaExhaustedError",
    "RouterPluginError",
    "Settings",
    "StoreError",
    "build_router",
    "install",
    "load_config",
    "proxy_handler",
]


def __getattr__(name: str):
    # Lazy: importing litellm takes seconds; `router_plugin.config` and the simulator should not pay for it.
    if name in ("build_router", "install"):
        from .adapter import installer as _install

        return getattr(_install, name)
    if name == "QuotaExhaustedError":
        from .adapter.strategy import QuotaExhaustedError

        return QuotaExhaustedError
    if name == "proxy_handler":
        from .adapter.proxy import proxy_handler

        return proxy_handler
    raise AttributeError(f"module 'router_plugin' has no attribute {name!r}")
