"""Running the simulator: in a daemon thread for tests (:func:`start_sim`), or in the foreground (``__main__``)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from aiohttp import web

from .app import build_app
from .clock import Clock
from .state import SimState

__all__ = ["SimHandle", "start_sim", "bind_socket", "make_runner"]


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket (``port=0`` picks a free port; read it from ``getsockname()``)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def make_runner(app: web.Application) -> web.AppRunner:
    # handler_cancellation: a client that hangs up (e.g. during a "stall") cancels its handler;
    # a short shutdown_timeout keeps stop() quick even with stalled streams open.
    return web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.25)


class SimHandle:
    """A simulator serving from its own event loop in a daemon thread. Use as a context manager or call stop()."""

    def __init__(self, state: SimState, host: str, port: int) -> None:
        self.state = state
        self.host = host
        self._sock = bind_socket(host, port)
        self.port: int = self._sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{self.port}"
        self.openrouter_base = self.base_url + "/api/v1"
        self.groq_base = self.base_url + "/openai/v1"
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"router-plugin-sim:{self.port}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError("simulator failed to start") from self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as e:  # surfaced in __init__
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _start(self) -> None:
        self._runner = make_runner(build_app(self.state))
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock, backlog=2048).start()

    # -- admin, applied directly to the shared state (thread-safe) ----------------------------------------------
    def configure(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge switches (see :mod:`router_plugin.sim.config`); raises ``ConfigError`` on a bad patch."""
        return self.state.configure(patch)

    def reset(self) -> None:
        self.state.reset()

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                fut.result(10)
            except Exception:  # pragma: no cover - best effort shutdown
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "SimHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SimHandle {self.base_url}>"


def start_sim(port: int = 0, host: str = "127.0.0.1", *, state: SimState | None = None, clock: Clock | None = None,
              config: dict[str, Any] | None = None) -> SimHandle:
    """Start the simulator in a daemon thread and return once it accepts connections.

    ``state`` shares an existing :class:`SimState`; otherwise one is made with ``clock`` (default ``time.time``)
    and the initial switches ``config``.
    """
    if state is None:
        state = SimState(clock=clock, config=config)
    elif clock is not None or config is not None:
        raise ValueError("pass either state or clock/config, not both")
    return SimHandle(state, host, port)
