"""The Kafka broker: ``kafka://host:9092[,host:9092]`` (aiokafka).

A topic is a Kafka topic; a group is a consumer group, and each
subscription one member of it, owning some of the topic's partitions.
Keys decide partitions (Kafka's murmur2 partitioner, as the Java client),
so one key is handled by one member at a time; a publish call's keyless
messages go to one partition together (a sticky partitioner), which keeps
them in order and batched. Per group, retries and released messages go to
``<topic>.retry.<group>``, read by the same members; dead letters of every
group go to ``<topic>.dlq``, each naming its group. Settling commits, per
partition, the highest offset below which everything is done
(:mod:`millstream.brokers.kafka.tracker`), once per batch. See
:mod:`millstream.brokers.kafka.subscription` for rebalancing, delayed
retries and how a crash's redelivery counts an attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from millstream.brokers.base import Capabilities, Layout
from millstream.brokers.kafka.connection import (
    KafkaConnection,
    KafkaOptions,
    Route,
    parse_url,
    translated,
)
from millstream.brokers.kafka.dead_letters import KafkaDeadLetters
from millstream.brokers.kafka.layout import layout
from millstream.brokers.kafka.members import (
    client_id,
    remove_predecessors,
    wait_for_rebalances,
    watch_connections,
)
from millstream.brokers.kafka.subscription import KafkaSubscription
from millstream.brokers.kafka.topics import ensure_topics, send
from millstream.brokers.kafka.wire import delay_topic, dlq_topic, retry_topic, topic_records
from millstream.errors import BrokerError, BrokerUnavailable
from millstream.message import OutgoingMessage

__all__ = ["KafkaBroker", "KafkaDeadLetters", "KafkaSubscription"]

log = logging.getLogger("millstream.brokers")


class KafkaBroker:
    """One producer and one admin client, shared by the publisher and every subscription.

    ``kafka://[user:password@]host:9092[,host:9092]`` with optional
    parameters (seconds unless said): ``partitions=8`` and ``replication=1``
    for topics millstream creates; ``session_timeout=10``, ``heartbeat=1``,
    ``rebalance_timeout=30`` for the group; ``request_timeout=5``, after which
    an unanswered request counts its connection dead; ``drain=10``, how long a revoked
    partition waits for its handlers before it is given up;
    ``idempotence=true`` (``acks=all`` always); ``linger=0.005`` and
    ``batch_size`` (bytes) for the producer; ``security_protocol`` and
    ``sasl_mechanism`` (SCRAM-SHA-512 when the URL has a user).

    ``route`` maps an address the cluster advertises to the one to dial;
    tests use it to put a proxy in front of every connection.
    """

    capabilities = Capabilities(native_delay=True, partitions=True, key_order=True, durable=True)

    def __init__(
        self, url: str, options: KafkaOptions | None = None, route: Route | None = None
    ) -> None:
        self.url = url
        self.options = options if options is not None else parse_url(url)
        self.connection = KafkaConnection(url, self.options, route)
        self._subscriptions: list[KafkaSubscription] = []

    @classmethod
    def from_url(cls, url: str) -> KafkaBroker:
        """The broker for ``url``; raises ``ConfigError`` naming what is wrong with it."""
        return cls(url, parse_url(url))

    async def connect(self) -> None:
        """Start the producer and admin client (checking the cluster answers); safe to repeat."""
        await self.connection.open()

    async def ping(self) -> None:
        """Connect if need be, then one metadata request to the cluster; a cluster that
        cannot answer it (aiokafka says only "unable to get metadata") is unavailable."""
        await self.connect()
        try:
            with translated(self.url):
                await self.producer().client.fetch_all_metadata()
        except BrokerUnavailable:
            raise
        except BrokerError as exc:
            raise BrokerUnavailable(str(exc)) from exc

    async def close(self) -> None:
        """Close every subscription (committing what is done), then the clients."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        await self.connection.close()

    def producer(self) -> AIOKafkaProducer:
        """The shared producer, else ``BrokerUnavailable`` (not connected, or closed)."""
        return self.connection.producer()

    async def ensure_topics(self, topics: Sequence[str], partitions: int | None = None) -> None:
        """Create the topics that do not exist yet (``partitions`` each, else the URL's)."""
        await ensure_topics(self.connection, topics, partitions)

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Send ``messages``, returning once every one is acknowledged by all in-sync replicas.

        Those with a ``deliver_at`` still ahead go to the topic's delay topic.
        """
        now = time.time()
        for out in messages:
            if out.deliver_at is not None and out.deliver_at > now:
                await self._publish_delayed(topic, messages, now)
                return
        await send(self.connection, topic, topic_records(messages))

    async def _publish_delayed(
        self, topic: str, messages: Sequence[OutgoingMessage], now: float
    ) -> None:
        later = [m for m in messages if m.deliver_at is not None and m.deliver_at > now]
        at_once = [m for m in messages if m.deliver_at is None or m.deliver_at <= now]
        connection = self.connection
        await ensure_topics(connection, [topic])
        delayed = delay_topic(topic)
        await ensure_topics(connection, [delayed], connection.topics.get(topic, 1))
        sends = [send(connection, delayed, topic_records(later))]
        if at_once:
            sends.append(send(connection, topic, topic_records(at_once)))
        await asyncio.gather(*sends)

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> KafkaSubscription:
        """Join ``group`` on ``topic`` and its retry topic; returns once partitions are assigned."""
        connection = self.connection
        connection.producer()
        await ensure_topics(connection, [topic])
        count = connection.topics.get(topic, 1)
        others = [retry_topic(topic, group), delay_topic(topic), dlq_topic(topic)]
        await ensure_topics(connection, others, count)
        options = self.options
        if member is not None:
            await self._remove_predecessors(group, member)
        consumer = AIOKafkaConsumer(
            **options.client(),
            client_id=client_id(member),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=round(options.session_timeout * 1000),
            heartbeat_interval_ms=round(options.heartbeat * 1000),
            rebalance_timeout_ms=round(options.rebalance_timeout * 1000),
            max_poll_interval_ms=round(
                max(options.max_poll_interval, options.rebalance_timeout) * 1000
            ),
            max_partition_fetch_bytes=1_048_576,
            fetch_max_wait_ms=100,
        )
        connection.adopt(consumer._client)
        wait_for_rebalances(consumer._client, options.join_timeout)
        subscription = KafkaSubscription(
            connection, consumer, topic, group, prefetch, member, on_close=self._forget
        )
        watch_connections(consumer._client, subscription.connection_lost)
        self._subscriptions.append(subscription)
        try:
            await subscription.start()
        except BaseException:
            await subscription.close()
            raise
        return subscription

    async def _remove_predecessors(self, group: str, member: str) -> None:
        """Remove a crashed member of this name from ``group``: its partitions move at
        once instead of after its session times out (:mod:`millstream.brokers.kafka.members`)."""
        try:
            with translated(self.url):
                gone = await remove_predecessors(self.producer().client, group, member)
        except BrokerError as exc:  # it then leaves when its session times out
            log.warning(
                "kafka: member %s could not remove its crashed predecessor from group %r: %s",
                member,
                group,
                exc,
            )
            return
        for member_id in gone:
            log.info(
                "kafka: member %s removed %s, its predecessor under that name, from group %r",
                member,
                member_id,
                group,
            )

    async def dead_letters(self, topic: str, group: str) -> KafkaDeadLetters:
        """The dead letters of ``topic`` for ``group`` (looking creates nothing)."""
        self.connection.producer()
        return KafkaDeadLetters(self.connection, topic, group)

    def layout(self, topic: str, group: str) -> Layout:
        """Where ``group``'s retries and dead letters of ``topic`` are kept, by name."""
        return layout(topic, group)

    def _forget(self, subscription: KafkaSubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
