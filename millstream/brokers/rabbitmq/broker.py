"""The RabbitMQ broker: ``amqp://`` and ``amqps://`` (aiormq, the transport of aio-pika).

A topic is a fanout exchange; a group is a durable queue bound to it (a
quorum queue unless ``?queue_type=classic``), so every group sees every
message and the members of a group compete for its queue. Names and the
message layout are in :mod:`millstream.brokers.rabbitmq.wire`.

Publishing uses publisher confirms on every message; a batch is sent in
windows and waited for as a whole. Members take deliveries with a prefetch
window (``basic.qos``) and settle a batch with one ``ack(multiple=True)``
over the longest run of settled delivery tags, plus single acks for what
completed out of order. A retry is a confirmed copy in the group's retry
queue for its delay step, which dead-letters it back to the group's queue
when its TTL runs out; a dead letter is a confirmed copy in ``Q.dlq``; the
original is acked only after its copy is confirmed (at-least-once).

A lost connection ends every subscription on it with ``BrokerUnavailable``;
RabbitMQ returns what they held to their queues, counted (the attempt goes
up). The broker's connection object remembers what they had not handed
out, and how much may have been on its way, and takes those returns off
again when the messages come back (see
:mod:`millstream.brokers.rabbitmq.returns`). The supervisor
calls :meth:`RabbitMqBroker.connect` and subscribes again, which declares
the topology again.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress

from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic

from millstream.brokers.base import Capabilities, Layout
from millstream.brokers.rabbitmq.connection import (
    Publication,
    RabbitMqConnection,
    RabbitMqOptions,
    parse_url,
    translated,
)
from millstream.brokers.rabbitmq.dead_letters import RabbitMqDeadLetters
from millstream.brokers.rabbitmq.layout import layout
from millstream.brokers.rabbitmq.subscription import RabbitMqSubscription
from millstream.brokers.rabbitmq.topology import declare_group, declare_topic
from millstream.brokers.rabbitmq.wire import Names, encode, tag_of
from millstream.errors import BrokerUnavailable
from millstream.message import OutgoingMessage

__all__ = ["RabbitMqBroker", "RabbitMqDeadLetters", "RabbitMqSubscription"]

_ADOPT_BATCH = 500  # messages moved at once from T.unrouted into a new group


class RabbitMqBroker:
    """One AMQP connection, shared by the publisher and every subscription (a channel each).

    ``amqp://user:password@host:5672/vhost`` or ``amqps://`` for TLS, with
    ``queue_type=quorum`` (default) or ``classic`` for the group queues;
    other query parameters (``heartbeat``, ``name``, TLS files) go to aiormq.
    """

    capabilities = Capabilities(native_delay=True, durable=True)

    def __init__(self, url: str, options: RabbitMqOptions | None = None) -> None:
        self.url = url
        self.options = options if options is not None else parse_url(url)
        self._connection = RabbitMqConnection(url, self.options)
        self._subscriptions: list[RabbitMqSubscription] = []

    @classmethod
    def from_url(cls, url: str) -> RabbitMqBroker:
        """The broker for ``url``; raises ``ConfigError`` naming what is wrong with it."""
        return cls(url, parse_url(url))

    @property
    def declared(self) -> set[tuple[str, str]]:
        """("exchange" | "queue", name) of everything this broker declared: for cleanup tools."""
        return self._connection.declared

    async def connect(self) -> None:
        """Open the connection unless it is open; safe to repeat, and how reconnecting happens."""
        await self._connection.open()

    async def ping(self) -> None:
        """Connect if need be, then one round trip: a passive declare of ``amq.fanout``."""
        await self.connect()
        channel = await self._connection.publisher()
        with translated(self.url):
            await channel.exchange_declare("amq.fanout", exchange_type="fanout", passive=True)

    async def close(self) -> None:
        """Close every subscription (releasing what it holds), then the connection."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        await self._connection.close()

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Publish to the topic's exchange; returns once RabbitMQ confirmed every message.

        A connection found dead (a broker restart leaves it so until used)
        or an exchange deleted meanwhile gets one more try on a fresh
        connection, topology declared again: publishing is at-least-once
        with the same message ids, so a message sent twice is a duplicate,
        never a loss.
        """
        if not messages:
            return
        names = Names(topic, "")
        items: list[Publication] = []
        for out in messages:
            body, properties = encode(out)
            items.append((names.exchange, "", body, properties))
        try:
            await self._publish_declared(names, items)
        except BrokerUnavailable:
            self._connection.topics.discard(topic)
            await self.connect()
            await self._publish_declared(names, items)

    async def _publish_declared(self, names: Names, items: Sequence[Publication]) -> None:
        connection = self._connection
        if names.topic not in connection.topics:
            channel = await connection.publisher()
            with translated(self.url):
                await declare_topic(channel, names, self.options.queue_type)
            connection.note_topic(names)
        await connection.send(items)

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> RabbitMqSubscription:
        """Join ``group`` on ``topic``: declare its topology, adopt unrouted messages, consume.

        Consuming starts at the first fetch, so a member that never fetches
        takes nothing from the others.
        """
        names = Names(topic, group)
        connection = self._connection
        channel = await connection.channel(confirms=False)
        try:
            with translated(self.url):
                await declare_topic(channel, names, self.options.queue_type)
                connection.note_topic(names)
                await declare_group(channel, names, self.options.queue_type)
                connection.declared.update({("queue", names.queue), ("queue", names.dlq)})
                await self._adopt_unrouted(channel, names)
        except BaseException:
            with suppress(Exception):
                await channel.close()
            raise
        subscription = RabbitMqSubscription(
            connection, names, channel, prefetch, member, forget=self._forget
        )
        self._subscriptions.append(subscription)
        return subscription

    async def dead_letters(self, topic: str, group: str) -> RabbitMqDeadLetters:
        """The dead-letter queue of ``topic`` and ``group`` (looking creates nothing)."""
        await self.connect()
        return RabbitMqDeadLetters(self._connection, Names(topic, group))

    def layout(self, topic: str, group: str) -> Layout:
        """Where ``group``'s retries and dead letters of ``topic`` are kept, by name."""
        return layout(topic, group)

    async def channel(self, *, confirms: bool = True) -> AbstractChannel:
        """A new channel on the connection, connecting first if needed."""
        return await self._connection.channel(confirms=confirms)

    def _forget(self, subscription: RabbitMqSubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    async def _adopt_unrouted(self, channel: AbstractChannel, names: Names) -> None:
        """Move what was published while no group was bound into this group's queue.

        Each message is copied (confirmed) before it is acked, so a crash
        meanwhile duplicates rather than loses. When two groups appear at
        once they may split this backlog; later groups never see it: a
        RabbitMQ queue holds only what was published after it was bound.
        """
        declared = await channel.queue_declare(names.unrouted, passive=True)
        if not declared.message_count:
            return
        while True:
            batch: list[DeliveredMessage] = []
            while len(batch) < _ADOPT_BATCH:
                got = await channel.basic_get(names.unrouted, no_ack=False)
                if not isinstance(got.delivery, Basic.GetOk):
                    break
                batch.append(got)
            if not batch:
                return
            await self._connection.send(
                [("", names.queue, m.body, m.header.properties) for m in batch], mandatory=True
            )
            await channel.basic_ack(tag_of(batch[-1]), multiple=True)
