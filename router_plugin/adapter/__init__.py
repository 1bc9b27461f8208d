"""router_plugin.adapter — the only code that imports LiteLLM (see docs/adapter.md, README "Support table").

    line.py        which LiteLLM line runs (detect), what each line must offer (NEEDS, check)
    router_api.py  one function per Router member the plugin uses, through the line's public API
    installer.py   build_router / install: the steps below, per line
    strategy.py    QuotaRouting (the pick) and the plugin's LiteLLM exceptions
    hooks.py       GuardedStrategy (num_retries=0 on the plugin's errors), AttemptHooks (core lines)
    callbacks.py   the CustomLogger that settles reservations and records failures
    streams.py     the stream guard around Router.acompletion / completion
    timeouts.py    per-attempt limits (1.108: around the private Router._acompletion) and the budget's keys
    retry.py       1.108 only: the private retry discipline (should_retry_this_error, no Retry-After sleep)
    proxy.py       the LiteLLM proxy's handler (1.108 line: the proxy extra installs only there)
"""

from .line import BANNED, LINES, Line, MissingHookError, check, detect

__all__ = ["BANNED", "LINES", "Line", "MissingHookError", "check", "detect"]
