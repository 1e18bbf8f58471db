"""The Redis side of the Redis broker: its URL, its connections, its errors, its scripts.

This is the one place where redis-py exceptions become millstream's
(:func:`translated`), so the broker and subscription code reads one
vocabulary: ``BrokerUnavailable`` (reconnect), ``AuthenticationError``
(stop), ``BrokerError`` (anything else).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.connection import parse_url as parse_client_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from millstream.errors import AuthenticationError, BrokerError, BrokerUnavailable, ConfigError
from millstream.urls import redact

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # redis-py works without it, only slower
    _pack = None

__all__ = [
    "DEFAULT_LEASE",
    "Arg",
    "GroupMissing",
    "RedisOptions",
    "Script",
    "Silent",
    "execute",
    "open_pool",
    "parse_url",
    "queue",
    "server_version",
    "translated",
]

Arg: TypeAlias = bytes | str | int | float

DEFAULT_LEASE = 30.0
DEFAULT_TRIM_INTERVAL = 10.0
EXPECTED = (
    "redis://[[user]:password@]host:6379[/db] or rediss://... for TLS, "
    "optionally with ?lease=30&trim=10"
)
# How long one command may take before the connection counts as dead: what a
# silent partition (packets dropped, no reset) costs before a consumer notices.
# A blocking read waits at most half of it (see redis.py), so an idle topic
# never looks dead.
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
    ours: dict[str, float] = {"lease": DEFAULT_LEASE, "trim": DEFAULT_TRIM_INTERVAL}
    rest: list[tuple[str, str]] = []
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        if name not in ours:
            rest.append((name, raw))
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (name == "lease" and value == 0):
            floor = "more than 0" if name == "lease" else "0 (off) or more"
            raise ConfigError(
                f"broker URL {shown!r}: {name}={raw!r} must be a number of seconds, "
                f"{floor}; expected e.g. redis://127.0.0.1:6379?{name}=30"
            )
        ours[name] = value
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    try:
        parse_client_url(client_url)
    except ValueError as exc:
        raise ConfigError(f"broker URL {shown!r}: {exc}; expected {EXPECTED}") from None
    return RedisOptions(client_url, lease=ours["lease"], trim_interval=ours["trim"])


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
            f"broker {redact(url)} stopped answering ({_text(exc)}); the network or the "
            "server is down, or the server is slower than ?socket_timeout=SECONDS in the URL "
            f"allows (default {COMMAND_TIMEOUT:g})"
        ) from exc
    except (redis_errors.ConnectionError, OSError) as exc:
        raise BrokerUnavailable(f"broker {redact(url)} is unreachable: {_text(exc)}") from exc
    except redis_errors.RedisError as exc:
        text = _text(exc)
        if text.startswith(_REFUSED):
            raise _refused(url, exc) from exc
        if text.startswith("NOGROUP"):
            raise GroupMissing(f"broker {redact(url)}: {text}") from exc
        if text.startswith(_TRANSIENT):
            raise BrokerUnavailable(f"broker {redact(url)} is not serving: {text}") from exc
        raise BrokerError(f"broker {redact(url)} failed: {text}") from exc


def _refused(url: str, exc: Exception) -> AuthenticationError:
    shown = redact(url)
    if isinstance(exc, redis_errors.NoPermissionError) or _text(exc).startswith("NOPERM"):
        return AuthenticationError(
            f"broker URL {shown!r} refused a command ({_text(exc)}); let the user's ACL "
            "run what millstream needs: +@stream +@sortedset +@scripting +ping +time +del"
        )
    if urlsplit(url).password is None:
        fix = "the server wants a password: put it in the URL (redis://:password@host:6379)"
    else:
        fix = "check the user and password in the URL (redis://user:password@host:6379)"
    return AuthenticationError(
        f"broker URL {shown!r} refused the credentials ({_text(exc)}); {fix}"
    )


def _text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


class Script:
    """A Lua script run by its SHA1, loaded on the server the first time it is missing.

    Scripts are how several keys change together atomically in one round
    trip; the server forgets them on restart, which the NOSCRIPT retry covers.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Redis, keys: Sequence[bytes], args: Sequence[Arg]) -> Any:
        try:
            return await execute(client, "EVALSHA", self.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            await execute(client, "SCRIPT", "LOAD", self.source)
            return await execute(client, "EVALSHA", self.sha, len(keys), *keys, *args)


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
