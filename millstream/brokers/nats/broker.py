"""The NATS JetStream broker: ``nats://`` (nats-py).

A topic is a subject, stored in a stream of its own (``MS_<topic>``) that
the first publisher or subscriber creates; a group is a durable pull
consumer on that stream (explicit ack, ``ack_wait`` = the lease, no
delivery limit: the runtime's ``RetryPolicy`` decides when a message is
dead, the server never drops one). Members pull in batches; a retry is a
``nak`` with the delay; a dead message is copied into the group's
dead-letter stream and then ``term``-ed. Released and replayed messages go
back to the group alone through a private subject of the topic's stream
(:mod:`millstream.brokers.nats.subscription` says why and how). Names and
subjects are in :class:`~millstream.brokers.nats.names.Names`; the
whole mapping is in docs/brokers/nats.md.

Publishing waits for the stream's acknowledgement of every message
(:class:`~millstream.brokers.nats.streams.JetStream`, which the broker
shares with its subscriptions and dead-letter queues).
"""

from __future__ import annotations

from collections.abc import Sequence

from millstream.brokers.base import Capabilities, Layout
from millstream.brokers.nats.connection import (
    REQUEST_TIMEOUT,
    Connection,
    NatsOptions,
    parse_url,
    translated,
)
from millstream.brokers.nats.dead_letters import NatsDeadLetters
from millstream.brokers.nats.layout import layout
from millstream.brokers.nats.names import Names, check_topic
from millstream.brokers.nats.streams import JetStream, StreamMissing
from millstream.brokers.nats.subscription import NatsSubscription
from millstream.brokers.nats.wire import topic_headers
from millstream.errors import BrokerUnavailable
from millstream.message import OutgoingMessage

__all__ = ["NatsBroker", "NatsDeadLetters", "NatsSubscription"]


class NatsBroker:
    """One connection to a NATS server, shared by the publisher and every subscription.

    ``nats://[user:password@]host:4222`` with ``lease=SECONDS`` (default 30:
    the consumers' ``ack_wait``, how long a member that stopped calling keeps
    a message before another member gets it) and ``max_ack_pending=N``
    (default 20000: the group-wide cap on unacknowledged messages, retries
    waiting for their delay included).
    """

    capabilities = Capabilities(native_delay=True, durable=True)

    def __init__(self, url: str, options: NatsOptions | None = None) -> None:
        self.url = url
        self.options = options if options is not None else parse_url(url)
        self.jetstream = JetStream(url, self.options)
        self._subscriptions: list[NatsSubscription] = []

    @classmethod
    def from_url(cls, url: str) -> NatsBroker:
        """The broker for ``url``; raises ``ConfigError`` naming what is wrong with it."""
        return cls(url, parse_url(url))

    async def connect(self) -> None:
        """Connect unless connected; after a lost connection, a fresh one. Safe to repeat.

        Consumers reconnecting at once share one new connection.
        """
        await self.jetstream.connect()

    async def ping(self) -> None:
        """Connect if need be, then one ``PING``/``PONG`` round trip."""
        await self.connect()
        with translated(self.url):
            await self.connection().client.flush(timeout=REQUEST_TIMEOUT)

    async def close(self) -> None:
        """Close every subscription (releasing what it holds), then the connection."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        await self.jetstream.close()

    def connection(self) -> Connection:
        """The live connection, else ``BrokerUnavailable`` (or what it was refused)."""
        return self.jetstream.connection()

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Put ``messages`` on the topic; returns once the stream has acknowledged every one.

        Safe to repeat after a failure: the stream drops a message id it
        has already stored (within its duplicate window, 2 minutes). So a
        connection found lost (a server restart, a partition) gets one more
        try on a fresh connection: a publisher has no supervisor to reconnect it.
        """
        check_topic(topic)
        names = Names(topic, "")
        items = [(out.payload, topic_headers(out)) for out in messages]
        try:
            await self._publish(names, items)
        except BrokerUnavailable:
            await self.connect()
            await self._publish(names, items)

    async def _publish(self, names: Names, items: list[tuple[bytes, dict[str, str]]]) -> None:
        jetstream = self.jetstream
        await jetstream.ensure_stream(names)
        try:
            await jetstream.send(names.topic, items, names.stream)
        except StreamMissing:
            # Deleted since we looked: create it again and send all (ids dedupe).
            await jetstream.ensure_stream(names)
            await jetstream.send(names.topic, items, names.stream)

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> NatsSubscription:
        """Join ``group`` on ``topic``: its durable consumer, created at the start of the stream."""
        check_topic(topic)
        names = Names(topic, group)
        jetstream = self.jetstream
        delivered = await jetstream.ensure_consumer(names)
        connection = jetstream.connection()
        jetstream.lost_deliveries(names).resumed(delivered)
        subscription = NatsSubscription(
            jetstream, connection, names, member, delivered, on_close=self._forget
        )
        await subscription.start()
        self._subscriptions.append(subscription)
        return subscription

    async def dead_letters(self, topic: str, group: str) -> NatsDeadLetters:
        """The dead-letter queue of ``topic`` and ``group`` (looking creates nothing)."""
        check_topic(topic)
        self.jetstream.connection()
        return NatsDeadLetters(self.jetstream, Names(topic, group))

    def layout(self, topic: str, group: str) -> Layout:
        """Where ``group``'s retries and dead letters of ``topic`` are kept, by name."""
        return layout(topic, group)

    async def ensure_stream(self, names: Names) -> None:
        """Create the topic's stream unless it exists; add our subjects to it if it lacks them."""
        await self.jetstream.ensure_stream(names)

    async def ensure_dead_stream(self, names: Names) -> None:
        """Create the group's dead-letter stream unless it exists."""
        await self.jetstream.ensure_dead_stream(names)

    def _forget(self, subscription: NatsSubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
