"""The aiohttp application: both providers' routes plus the admin endpoints.

Admin (JSON): ``POST /_sim/reset``, ``POST /_sim/config`` (merge switches; 400 with the offending key on a bad
patch), ``GET /_sim/config`` (current switches, keys hashed), ``GET /_sim/stats``.
"""

from __future__ import annotations

from aiohttp import web

from . import groq, openrouter
from .config import ConfigError
from .state import SimState
from .wire import json_response, read_json

__all__ = ["build_app", "STATE_KEY"]

STATE_KEY = web.AppKey("router_plugin_sim_state", SimState)


def build_app(state: SimState | None = None) -> web.Application:
    """A fresh application serving OpenRouter under ``/api/v1`` and Groq under ``/openai/v1``."""
    state = state or SimState()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = state
    openrouter.add_routes(app, state)
    groq.add_routes(app, state)

    async def reset(request: web.Request) -> web.Response:
        state.reset()
        return json_response(200, {"ok": True})

    async def configure(request: web.Request) -> web.Response:
        patch = await read_json(request)
        if patch is None:
            return json_response(400, {"error": "body must be a JSON object"})
        try:
            return json_response(200, {"ok": True, "config": state.configure(patch)})
        except ConfigError as e:
            return json_response(400, {"error": str(e)})

    async def show_config(request: web.Request) -> web.Response:
        return json_response(200, state.config_view())

    async def stats(request: web.Request) -> web.Response:
        return json_response(200, state.stats())

    app.router.add_post("/_sim/reset", reset)
    app.router.add_post("/_sim/config", configure)
    app.router.add_get("/_sim/config", show_config)
    app.router.add_get("/_sim/stats", stats)
    return app
