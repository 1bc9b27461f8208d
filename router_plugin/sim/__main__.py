"""``python -m router_plugin.sim --host 127.0.0.1 --port 8090``: serve the simulator until killed."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from aiohttp import web

from .app import build_app
from .config import ConfigError
from .server import bind_socket, make_runner
from .state import SimState


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m router_plugin.sim",
                                description="Offline simulator of OpenRouter (/api/v1) and Groq (/openai/v1).")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8090, help="TCP port; 0 picks a free one (default 8090)")
    p.add_argument("--config", metavar="JSON_FILE", help="initial switches, same schema as POST /_sim/config")
    p.add_argument("--latency-ms", type=float, default=None, help="global latency added to every chat reply")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    patch: dict = {}
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            patch = json.load(f)
    if args.latency_ms is not None:
        patch["latency_ms"] = args.latency_ms
    state = SimState(config=patch or None)
    sock = bind_socket(args.host, args.port)
    runner = make_runner(build_app(state))
    await runner.setup()
    await web.SockSite(runner, sock, backlog=2048).start()
    host = f"[{args.host}]" if ":" in args.host else args.host
    base = f"http://{host}:{sock.getsockname()[1]}"
    print(f"router_plugin.sim serving\n  OpenRouter: {base}/api/v1\n  Groq:       {base}/openai/v1\n"
          f"  admin:      {base}/_sim/stats", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except ConfigError as e:
        print(f"error: --config: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
