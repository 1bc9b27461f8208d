"""The reservation lane: one pipelined Redis connection per event loop, for the one call on every request's path.

A routing decision is one EVALSHA (reserve.lua). Through redis-py's asyncio client that call costs about two and a
half times the round trip itself (measured: 171 µs against 72 µs for the same call, codec included, on one idle
process; see bench/ part 4): a pooled connection is checked out under a lock and a condition, every write runs in
a task of its own (``asyncio.wait_for``), every read under a timeout context. The lane sends the same EVALSHA on one
connection that all requests of the loop share, pipelined: a call writes its packed command and waits for its reply,
which Redis sends in order (a FIFO of futures; hiredis parses the replies, as redis-py does with hiredis installed).
Many requests in flight cost one connection and no waiting for a free one.

Failures are redis-py's own exception classes, so the store's fault policy (resilient.py) treats them as it treats
redis-py's: a reply slower than the store's timeout raises ``redis.TimeoutError`` and drops the connection (every
call waiting on it gets ``redis.ConnectionError``); a lost connection fails the calls in flight the same way; the
next call connects again. A call cancelled while it waits leaves its reply to be read and dropped, so the replies
of the others stay in order. NOSCRIPT (a restarted or flushed server) loads the script (SCRIPT LOAD, as redis-py's
``Script`` does, within SECURITY.md's least-privilege ACL) and sends it again.

Where the lane is used: plain TCP (``redis://``) and Unix sockets (``unix://``, the embedded server), with the URL's
user, password and db and no other option. TLS (``rediss://``), a cluster, a URL with other options (``?...``) and a
store handed a ready client (tests: fakeredis) keep redis-py for every call (``Lane.of`` answers None).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any, Awaitable, Sequence

import hiredis
import redis

from .connect import StoreTarget, parse_redis_url

__all__ = ["Lane", "LaneAddress", "pack"]

_PLAIN_OPTIONS = {"host", "port", "db", "path", "username", "password", "connection_class"}


class _ReplyError(Exception):
    """An error reply (hiredis returns it, it does not raise it)."""


def pack(*parts: Any) -> bytes:
    """One command in RESP, encoded as redis-py encodes its arguments (hiredis's packer, in C)."""
    return hiredis.pack_command(parts)


@dataclass(frozen=True)
class LaneAddress:
    host: str | None
    port: int | None
    path: str | None
    db: int
    username: str | None
    password: str | None
    timeout_s: float

    @classmethod
    def of(cls, target: StoreTarget) -> "LaneAddress | None":
        if target.cluster:
            return None
        if target.embedded_path is not None and not target.url:
            from .connect import ensure_embedded

            return cls(None, None, str(ensure_embedded(target.embedded_path)), 0, None, None, target.timeout_s)
        if not target.url:
            return None
        parsed = parse_redis_url(target.url)
        if parsed.scheme not in ("redis", "unix"):
            return None
        options = redis.connection.parse_url(parsed.bare())
        if set(options) - _PLAIN_OPTIONS:
            return None
        return cls(options.get("host"), options.get("port"), options.get("path"), int(options.get("db") or 0),
                   parsed.username, parsed.password, target.timeout_s)

    def describe(self) -> str:
        return self.path or f"{self.host}:{self.port}"


class _Connection(asyncio.Protocol):
    def __init__(self, address: LaneAddress) -> None:
        self.address = address
        self.reader = hiredis.Reader(replyError=_ReplyError)
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while True:
                reply = self.reader.gets()
                if reply is False:
                    return
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # not Redis's protocol, or a reply nobody asked for
            self.close(redis.ConnectionError(f"the quota store at {self.address.describe()} sent a reply that is "
                                             f"not Redis's protocol ({type(exc).__name__})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(redis.ConnectionError(f"Connection to the quota store at {self.address.describe()} was closed"
                                        + (f": {exc}" if exc else "")))

    def fail(self, error: BaseException) -> None:
        if self.lost is None:
            self.lost = error
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)

    def close(self, error: BaseException) -> None:
        self.fail(error)
        if self.transport is not None:
            self.transport.close()

    def send(self, command: bytes) -> asyncio.Future:
        if self.lost is not None:
            raise self.lost
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(command)  # type: ignore[union-attr]
        return future


class Lane:
    """One loop's pipelined connection (see the module doc). ``await lane.start_evalsha(script, keys, args)``."""

    def __init__(self, address: LaneAddress) -> None:
        self.address = address
        self._connection: _Connection | None = None
        self._opening: asyncio.Future | None = None
        self.connects = 0  # connections opened (tests, status)

    def start_evalsha(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Awaitable[Any]:
        """EVALSHA of ``script`` (a script registered with redis-py: its ``sha`` and ``script`` source): when this
        loop's connection is open the command is written before this returns (Redis runs it while the caller does
        other work); await the result for the reply."""
        command = pack("EVALSHA", script.sha, len(keys), *keys, *args)
        connection = self._connection
        if connection is None or connection.lost is not None:
            return self._script_reply(self.call(command), script.script, command)
        return self._script_reply(self._wait(connection, connection.send(command)), script.script, command)

    async def _script_reply(self, pending: Awaitable[Any], source: str, command: bytes) -> Any:
        reply = await pending
        if isinstance(reply, _ReplyError) and str(reply).startswith("NOSCRIPT"):
            loaded = await self.call(pack("SCRIPT", "LOAD", source))
            if isinstance(loaded, _ReplyError):
                raise _response_error(loaded)
            reply = await self.call(command)
        if isinstance(reply, _ReplyError):
            raise _response_error(reply)
        return reply

    async def call(self, command: bytes) -> Any:
        """Send one packed command and wait (at most the store's timeout) for its reply; an error reply is
        returned as it is."""
        connection = self._connection
        if connection is None or connection.lost is not None:
            connection = await self._connect()
        return await self._wait(connection, connection.send(command))

    async def _wait(self, connection: _Connection, future: asyncio.Future) -> Any:
        try:
            async with asyncio.timeout(self.address.timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            if future.done():  # the reply was read in the very loop turn the timer fired (this loop ran late)
                return future.result()
            future.cancel()  # its reply, if it ever comes, is read and dropped: the others stay in order
            connection.close(redis.ConnectionError(f"the quota store at {self.address.describe()} did not answer "
                                                   f"within {self.address.timeout_s:g} s"))
            raise redis.TimeoutError(f"Timeout reading from the quota store at {self.address.describe()}") from None
        except asyncio.CancelledError:  # the caller went away: its reply is read and dropped when it comes
            future.cancel()
            raise

    async def _connect(self) -> _Connection:
        """The calls of this loop that find no open connection share one attempt to open it, and its error."""
        opening = self._opening
        if opening is None:
            opening = self._opening = asyncio.ensure_future(self._open_once())
            opening.add_done_callback(lambda task: task.cancelled() or task.exception())  # retrieved
        return await asyncio.shield(opening)

    async def _open_once(self) -> _Connection:
        try:
            connection = self._connection = await self._open()
            self.connects += 1
            return connection
        finally:
            self._opening = None

    async def _open(self) -> _Connection:
        address = self.address
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(address.timeout_s):
                if address.path:
                    _, connection = await loop.create_unix_connection(lambda: _Connection(address), address.path)
                else:
                    _, connection = await loop.create_connection(lambda: _Connection(address), address.host,
                                                                 address.port)
                for command in _handshake(address):
                    reply = await connection.send(command)
                    if isinstance(reply, _ReplyError):
                        connection.close(redis.ConnectionError("handshake refused"))
                        raise _response_error(reply)
        except TimeoutError:
            raise redis.TimeoutError(f"Timeout connecting to the quota store at {address.describe()}") from None
        except OSError as exc:
            raise redis.ConnectionError(f"Error connecting to the quota store at {address.describe()}: "
                                        f"{exc.strerror or exc}") from None
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close(redis.ConnectionError("the quota store's lane was closed"))
            self._connection = None


def _handshake(address: LaneAddress) -> list[bytes]:
    commands = []
    if address.password is not None:
        commands.append(pack("AUTH", address.username, address.password) if address.username
                        else pack("AUTH", address.password))
    if address.db:
        commands.append(pack("SELECT", address.db))
    return commands


def _response_error(reply: _ReplyError) -> redis.RedisError:
    text = str(reply)
    if text.startswith(("WRONGPASS", "NOAUTH")) or "invalid password" in text:
        return redis.AuthenticationError(text)
    if text.startswith("NOSCRIPT"):
        return redis.exceptions.NoScriptError(text)
    return redis.ResponseError(text)
