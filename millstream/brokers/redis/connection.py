"""The Redis side of the Redis broker: its URL, its connections, its errors.

:class:`RedisConnection` is what the broker, its subscriptions and its
dead-letter queues talk through: the pool, the shared client, the parsed
URL. This is the one place where redis-py exceptions become millstream's
(:func:`translated`), so the broker and subscription code reads one
vocabulary: ``BrokerUnavailable`` (reconnect), ``AuthenticationError``
(stop), ``BrokerError`` (anything else).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.connection import parse_url as parse_client_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from millstream.brokers.redis.wire import Keys
from millstream.errors import (
    AuthenticationError,
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    text_of,
)
from millstream.urls import query_seconds, redact

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # redis-py works without it, only slower
    _pack = None

__all__ = [
    "DEFAULT_LEASE",
    "Arg",
    "GroupMissing",
    "RedisConnection",
    "RedisOptions",
    "Silent",
    "execute",
    "open_pool",
    "parse_url",
    "queue",
    "server_version",
    "translated",
]

Arg: TypeAlias = bytes | str | int | float
T = TypeVar("T")
Unseen: TypeAlias = tuple[Sequence[bytes], Sequence[bytes]]
"""Entry ids a member was delivered and never handed out, by stream (topic, retry)."""

DEFAULT_LEASE = 30.0
DEFAULT_TRIM_INTERVAL = 10.0
EXPECTED = (
    "redis://[[user]:password@]host:6379[/db] or rediss://... for TLS, "
    "optionally with ?lease=30&trim=10"
)
# How long one command may take before the connection counts as dead: what a
# silent partition (packets dropped, no reset) costs before a consumer notices.
# A blocking read waits at most half of it (see RedisBroker.subscribe), so an
# idle topic never looks dead.
COMMAND_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
# Every subscription keeps one connection for its blocking reads; the rest
# are shared by publishing and settling. redis-py's default of 100 is low
# for a service with many consumers.
MAX_CONNECTIONS = 1000

# Server errors that mean "not now" rather than "never": a replica being
# promoted, a server still loading its data, a cluster slot moving.
_TRANSIENT = ("LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY ")
_REFUSED = ("NOAUTH", "WRONGPASS", "NOPERM")


class GroupMissing(BrokerError):
    """The consumer group (or its stream) is gone: the keys were deleted or the data lost.

    Retriable: the subscription creates the group again, at the start of
    what the stream still holds.
    """

    retriable = True


class Silent(BrokerUnavailable):
    """The server did not answer within the socket timeout: the network or the server
    is gone without a word (a silent partition). Trying again at once on a fresh
    connection would only wait as long again."""


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """What a ``redis://`` URL says: where to connect, and millstream's own parameters."""

    client_url: str
    lease: float = DEFAULT_LEASE
    trim_interval: float = DEFAULT_TRIM_INTERVAL


def parse_url(url: str) -> RedisOptions:
    """Split ``url`` into redis-py's URL and millstream's ``lease`` and ``trim``.

    Raises ``ConfigError`` naming the URL, what is wrong and the expected form.
    """
    parts = urlsplit(url)
    shown = redact(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"broker URL {shown!r} is not a Redis URL; expected {EXPECTED}")
    if not parts.hostname:
        raise ConfigError(f"broker URL {shown!r} has no host; expected {EXPECTED}")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        # redis-py would quietly use database 0 instead.
        raise ConfigError(
            f"broker URL {shown!r}: {database!r} is not a database number; expected {EXPECTED}"
        )
    lease, trim_interval = DEFAULT_LEASE, DEFAULT_TRIM_INTERVAL
    rest: list[tuple[str, str]] = []
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        example = f"redis://127.0.0.1:6379?{name}=30"
        if name == "lease":
            lease = query_seconds(url, name, raw, example=example)
        elif name == "trim":
            trim_interval = query_seconds(url, name, raw, example=example, allow_zero=True)
        else:
            rest.append((name, raw))
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    try:
        parse_client_url(client_url)
    except ValueError as exc:
        raise ConfigError(f"broker URL {shown!r}: {exc}; expected {EXPECTED}") from None
    return RedisOptions(client_url, lease=lease, trim_interval=trim_interval)


def open_pool(options: RedisOptions) -> ConnectionPool:
    """A connection pool for ``options``; it connects lazily, on the first command.

    redis-py's own retries are off: a lost connection must reach the
    supervisor (state RECONNECTING) instead of being retried behind its back,
    and refused credentials must not be tried again at all.
    """
    kwargs: dict[str, Any] = {
        "retry": Retry(NoBackoff(), 0),
        "socket_timeout": COMMAND_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "max_connections": MAX_CONNECTIONS,
    }
    kwargs.update(parse_client_url(options.client_url))  # the URL's own options win...
    # ...but these two: payloads are bytes and must round-trip as they are, and
    # replies are read in their RESP2 shapes.
    kwargs.update(decode_responses=False, protocol=2)
    if _pack is not None and kwargs.get("encoding", "utf-8") == "utf-8":
        cls = kwargs.get("connection_class", Connection)
        kwargs["connection_class"] = _HIREDIS_PACKING.get(cls, cls)
    return ConnectionPool(**kwargs)


class RedisConnection:
    """The broker's pool and shared client: what the broker, its subscriptions and its
    dead-letter queues run their commands through.

    The broker owns one for its lifetime and hands it down; ``open`` after
    ``close`` makes a fresh pool. It also keeps what members that could not
    release had buffered and never handed out, for the next member under
    the same name.
    """

    def __init__(self, url: str, options: RedisOptions) -> None:
        self.url = url
        self.options = options
        self._pool: ConnectionPool | None = None
        self._client: Redis | None = None
        self._unseen: dict[tuple[Keys, str], Unseen] = {}

    def open(self) -> bool:
        """Make the pool and the shared client unless they exist; ``True`` if they are new."""
        if self._client is not None:
            return False
        self._pool = open_pool(self.options)
        self._client = Redis(connection_pool=self._pool)
        return True

    async def close(self) -> None:
        """Close the pool's connections; ``client()`` raises until ``open`` again."""
        pool, self._pool, self._client = self._pool, None, None
        if pool is not None:
            with suppress(Exception):
                await pool.aclose()

    def client(self) -> Redis:
        """The shared client, else ``BrokerUnavailable`` (not connected, or closed)."""
        if self._client is None:
            raise BrokerUnavailable(f"broker {redact(self.url)}: not connected")
        return self._client

    def reader(self) -> tuple[Redis, float | None]:
        """A client on a connection of its own, for one member's blocking reads, and the
        pool's socket timeout (``None``: none).

        Its own connection: a blocking XREADGROUP must not hold one the
        publisher or the settler need, and a dropped one must be noticed.
        Its XREADGROUP replies come raw, to be decoded straight into messages
        (:func:`millstream.brokers.redis.wire.messages`).
        """
        reader = Redis(connection_pool=self._pool, single_connection_client=True)
        reader.set_response_callback("XREADGROUP", _raw_reply)
        socket_timeout = self._pool.connection_kwargs.get("socket_timeout") if self._pool else None
        return reader, socket_timeout

    async def call(self, operation: Callable[[Redis], Awaitable[T]]) -> T:
        """Run ``operation`` on the shared client, with redis-py's errors translated.

        Idle pooled connections can all be dead after a server restart or a
        failover, and redis-py finds out only by using one; so an operation
        that failed on a dead connection runs once more on a fresh one (not
        one the server left unanswered: that one would wait as long again). Only operations that
        may run twice come here: idempotent ones, and publishing, which is
        at-least-once with the same message ids.
        """
        client = self.client()
        try:
            with translated(self.url):
                return await operation(client)
        except Silent:
            raise  # a server that stopped answering would keep a fresh connection waiting too
        except BrokerUnavailable:
            pool = self._pool
            if pool is None:
                raise
            await pool.disconnect(inuse_connections=False)
            with translated(self.url):
                return await operation(client)

    def remember_unseen(self, keys: Keys, member: str, unseen: Unseen) -> None:
        """Keep what a member buffered and never handed out, by stream, for its successor."""
        self._unseen[keys, member] = unseen

    def unseen(self, keys: Keys, member: str) -> Unseen:
        """What a predecessor under ``member`` buffered and never handed out (once)."""
        return self._unseen.pop((keys, member), ((), ()))


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


class _HiredisPacking(AbstractConnection):
    """Packs commands with hiredis (C), as redis-py's synchronous client does.

    redis-py's asyncio client packs in Python, about 0.5 µs per argument:
    more than everything else a publish of a 9-field XADD costs.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str) and " " in first:  # "SCRIPT LOAD" style names
            args = (*first.encode().split(), *args[1:])
        assert _pack is not None  # this class is only used when hiredis is there
        try:
            return [_pack(args)]
        except TypeError:  # a type hiredis does not take: redis-py knows them all
            packed: list[bytes] = super().pack_command(*args)
            return packed


class _HiredisConnection(_HiredisPacking, Connection):
    pass


class _HiredisSSLConnection(_HiredisPacking, SSLConnection):
    pass


_HIREDIS_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _HiredisConnection,
    SSLConnection: _HiredisSSLConnection,
}


@contextmanager
def translated(url: str) -> Iterator[None]:
    """Raise what redis-py raises inside as millstream's exception tree."""
    try:
        yield
    except (
        redis_errors.AuthenticationError,
        redis_errors.AuthenticationWrongNumberOfArgsError,
        redis_errors.NoPermissionError,
    ) as exc:
        raise _refused(url, exc) from exc
    except (redis_errors.TimeoutError, TimeoutError) as exc:
        raise Silent(
            f"broker {redact(url)} stopped answering ({text_of(exc)}); the network or the "
            "server is down, or the server is slower than ?socket_timeout=SECONDS in the URL "
            f"allows (default {COMMAND_TIMEOUT:g})"
        ) from exc
    except (redis_errors.ConnectionError, OSError) as exc:
        raise BrokerUnavailable(f"broker {redact(url)} is unreachable: {text_of(exc)}") from exc
    except redis_errors.RedisError as exc:
        text = text_of(exc)
        if text.startswith(_REFUSED):
            raise _refused(url, exc) from exc
        if text.startswith("NOGROUP"):
            raise GroupMissing(f"broker {redact(url)}: {text}") from exc
        if text.startswith(_TRANSIENT):
            raise BrokerUnavailable(f"broker {redact(url)} is not serving: {text}") from exc
        raise BrokerError(f"broker {redact(url)} failed: {text}") from exc


def _refused(url: str, exc: Exception) -> AuthenticationError:
    shown = redact(url)
    if isinstance(exc, redis_errors.NoPermissionError) or text_of(exc).startswith("NOPERM"):
        return AuthenticationError(
            f"broker URL {shown!r} refused a command ({text_of(exc)}); let the user's ACL "
            "run what millstream needs: +@stream +@sortedset +@scripting +ping +time +del"
        )
    if urlsplit(url).password is None:
        fix = "the server wants a password: put it in the URL (redis://:password@host:6379)"
    else:
        fix = "check the user and password in the URL (redis://user:password@host:6379)"
    return AuthenticationError(
        f"broker URL {shown!r} refused the credentials ({text_of(exc)}); {fix}"
    )


async def server_version(client: Redis) -> str | None:
    """The server's Redis version, or ``None`` when the user may not run INFO (ACLs)."""
    try:
        info = await execute(client, "INFO", "server")
    except redis_errors.NoPermissionError:
        return None
    version = info.get("redis_version")
    return None if version is None else str(version)


# redis-py leaves execute_command untyped; these two give it the one signature used here.


async def execute(client: Redis, *args: Arg) -> Any:
    """Send one command and return its reply, parsed by redis-py's callback for it."""
    call = cast(Callable[..., Awaitable[Any]], client.execute_command)
    return await call(*args)


def queue(pipe: Pipeline, *args: Arg) -> None:
    """Add one command to a pipeline; it is sent with the others by ``execute``."""
    cast(Callable[..., object], pipe.execute_command)(*args)
