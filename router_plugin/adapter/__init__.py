"""router_plugin.adapter — where router_plugin meets LiteLLM (prototype for issue 15; see docs/adapter.md).

Nothing else in the package imports this yet: ``installer.install`` is still the entry point on 1.108. This package
shows that the same strategy, callbacks, stream guard and retry discipline install through public hooks on both
supported lines (1.108.7+, 1.109.3+, 1.110.2+), with the line decided in one place (``line.detect``) and a
``MissingHookError`` naming the LiteLLM version when a hook is missing.
"""

from .line import BANNED, LINES, Line, MissingHookError, check, detect

__all__ = ["BANNED", "LINES", "Line", "MissingHookError", "check", "detect"]
