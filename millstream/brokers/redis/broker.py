"""The Redis Streams broker: ``redis://`` and ``rediss://`` (redis-py asyncio with hiredis).

A topic is a stream; a group is a consumer group on it, created from the
start of the stream so a backlog published before the first consumer is
delivered. Each member reads the topic and its group's retry stream in one
``XREADGROUP``, and settles a batch in one round trip (``XACK``, or one Lua
script when the batch holds retries or dead letters). Retries and dead
letters are per group, so a retry never reaches another group. The key
layout is in :mod:`millstream.brokers.redis.wire`, the scripts in
:mod:`millstream.brokers.redis.scripts`.

Each member keeps what it holds alive, moves due retries, takes over what
dead members held (``XAUTOCLAIM`` after the lease) and trims the topic as
part of its fetches (:mod:`millstream.brokers.redis.subscription`).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from millstream.brokers.base import Capabilities, Layout
from millstream.brokers.redis.connection import (
    RedisConnection,
    RedisOptions,
    execute,
    parse_url,
    queue,
    server_version,
)
from millstream.brokers.redis.dead_letters import RedisDeadLetters
from millstream.brokers.redis.layout import layout
from millstream.brokers.redis.scripts import ensure_group
from millstream.brokers.redis.subscription import HOUSEKEEPING_MAX, RedisSubscription
from millstream.brokers.redis.wire import Keys, encode
from millstream.errors import BrokerError, BrokerUnavailable
from millstream.message import OutgoingMessage
from millstream.urls import redact, refuse_unknown_hosts

__all__ = ["RedisBroker", "RedisDeadLetters", "RedisSubscription"]

_PUBLISH_CHUNK = 10_000  # XADDs per pipeline: bounds the client's buffers, not the batch
_OLDEST = (6, 2)  # XAUTOCLAIM and XPENDING IDLE; the lag needs 7.0 (None before)


class RedisBroker:
    """One connection pool to a Redis server, shared by the publisher and every subscription.

    ``redis://[[user]:password@]host:6379[/db]`` or ``rediss://`` for TLS,
    with ``lease=SECONDS`` (default 30: how long a member that stopped
    calling keeps its messages before another member takes them over) and
    ``trim=SECONDS`` (default 10: how often a member trims the topic below
    what every group still needs; 0 turns trimming off). Other query
    parameters go to redis-py as they are.
    """

    capabilities = Capabilities(native_delay=True, durable=True)

    def __init__(self, url: str, options: RedisOptions | None = None) -> None:
        self.url = url
        self.options = options if options is not None else parse_url(url)
        self._connection = RedisConnection(url, self.options)
        self._subscriptions: list[RedisSubscription] = []
        self._version_checked = False

    @classmethod
    def from_url(cls, url: str) -> RedisBroker:
        """The broker for ``url``; raises ``ConfigError`` naming what is wrong with it."""
        return cls(url, parse_url(url))

    async def connect(self) -> None:
        """Make sure the server answers (and accepts the credentials); safe to repeat."""
        connection = self._connection
        if connection.open():
            self._version_checked = False
        if self._version_checked:
            await connection.call(lambda client: execute(client, "PING"))
            return
        try:
            found = await connection.call(server_version)
        except BrokerUnavailable as exc:
            await refuse_unknown_hosts(self.url, exc)
            raise
        if found is not None and _release(found) < _OLDEST:
            raise BrokerError(
                f"broker {redact(self.url)} runs Redis {found}; millstream needs "
                f"{'.'.join(map(str, _OLDEST))} or newer (XAUTOCLAIM, XPENDING IDLE)"
            )
        self._version_checked = True

    async def ping(self) -> None:
        """``connect``, which sends ``PING`` once connected."""
        await self.connect()

    async def close(self) -> None:
        """Close every subscription (releasing what it holds), then the connections."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        await self._connection.close()

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Append ``messages`` to the topic's stream, pipelined; returns once Redis has them all."""
        stream = topic.encode()
        for start in range(0, len(messages), _PUBLISH_CHUNK):
            await self._append(stream, messages[start : start + _PUBLISH_CHUNK])

    async def _append(self, stream: bytes, chunk: Sequence[OutgoingMessage]) -> None:
        async def pipelined(client: Redis) -> None:
            pipe = client.pipeline(transaction=False)
            for out in chunk:
                queue(pipe, "XADD", stream, "*", *encode(out))
            await pipe.execute()

        await self._connection.call(pipelined)

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> RedisSubscription:
        """Join ``group`` on ``topic``, creating it at the start of the stream if it is new.

        ``member`` is the name Redis knows the member by (``XINFO CONSUMERS``);
        its first fetches take back at once what that name still holds (a
        predecessor that crashed), counted as an attempt. ``None`` makes a
        fresh name, whose predecessor's messages come back after the lease.
        """
        keys = Keys(topic, group)
        connection = self._connection
        await ensure_group(connection, keys)
        reader, socket_timeout = connection.reader()
        # A blocking read must end well within the socket timeout, or an idle
        # topic would look like a dead connection (?socket_timeout= in the URL).
        longest_wait = socket_timeout / 2 if socket_timeout else HOUSEKEEPING_MAX
        subscription = RedisSubscription(
            connection, keys, reader, longest_wait, member, forget=self._forget
        )
        self._subscriptions.append(subscription)
        return subscription

    async def dead_letters(self, topic: str, group: str) -> RedisDeadLetters:
        """The dead-letter queue of ``topic`` and ``group`` (looking creates nothing)."""
        self._connection.client()
        return RedisDeadLetters(self._connection, Keys(topic, group))

    def layout(self, topic: str, group: str) -> Layout:
        """Where ``group``'s retries and dead letters of ``topic`` are kept, by name."""
        return layout(topic, group)

    def _forget(self, subscription: RedisSubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
