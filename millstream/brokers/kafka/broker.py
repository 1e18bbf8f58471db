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
(:mod:`millstream.brokers.kafka.offsets`), once per batch. See
:mod:`millstream.brokers.kafka.subscription` for rebalancing, delayed
retries and how a crash's redelivery counts an attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.cluster import ClusterMetadata
from aiokafka.partitioner import murmur2
from aiokafka.structs import BrokerMetadata

from millstream.brokers.base import Capabilities
from millstream.brokers.kafka.connection import KafkaOptions, parse_url, redact, translated
from millstream.brokers.kafka.dead_letters import KafkaDeadLetters
from millstream.brokers.kafka.members import (
    client_id,
    remove_predecessors,
    wait_for_rebalances,
    watch_connections,
)
from millstream.brokers.kafka.subscription import KafkaSubscription
from millstream.brokers.kafka.wire import Headers, dlq_topic, retry_topic, topic_headers
from millstream.errors import BrokerError, BrokerUnavailable
from millstream.message import OutgoingMessage
from millstream.urls import refuse_unknown_hosts

__all__ = ["KafkaBroker", "KafkaDeadLetters", "KafkaSubscription"]

Route = Callable[[str, int], tuple[str, int]]
Record = tuple[bytes | None, bytes, Headers, int]

log = logging.getLogger("millstream.brokers.kafka.broker")


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
        self.route = route
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._known: dict[str, int] = {}
        self._sticky: dict[str, int] = {}
        self._subscriptions: list[KafkaSubscription] = []
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Future[Any]] = set()

    @classmethod
    def from_url(cls, url: str) -> KafkaBroker:
        """The broker for ``url``; raises ``ConfigError`` naming what is wrong with it."""
        return cls(url, parse_url(url))

    async def connect(self) -> None:
        """Start the producer and admin client (checking the cluster answers); safe to repeat."""
        async with self._lock:
            if self._producer is not None:
                return
            options = self.options
            producer = AIOKafkaProducer(
                **options.client(),
                client_id=f"millstream-{os.getpid()}",
                acks="all",
                enable_idempotence=options.idempotence,
                linger_ms=round(options.linger * 1000),
                max_batch_size=options.batch_size,
            )
            admin = AIOKafkaAdminClient(**options.client(), client_id=f"millstream-{os.getpid()}")
            self.adopt(producer.client)
            self.adopt(admin._client)
            try:
                with translated(self.url):
                    await admin.start()
                    try:
                        await producer.start()
                    except kafka_errors.UnknownError as exc:
                        if options.idempotence:
                            raise BrokerError(
                                f"broker {redact(self.url)} refused an idempotent producer "
                                f"({exc!r}); if it cannot do idempotence (e.g. Tansu), add "
                                "?idempotence=false to the URL"
                            ) from exc
                        raise
            except BaseException as exc:
                with suppress(Exception):
                    await producer.stop()
                with suppress(Exception):
                    await admin.close()
                if isinstance(exc, BrokerUnavailable):
                    await refuse_unknown_hosts(self.url, exc)
                raise
            self._producer, self._admin = producer, admin

    async def close(self) -> None:
        """Close every subscription (committing what is done), then the clients."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        if self._background:
            await asyncio.wait(list(self._background), timeout=self.options.request_timeout)
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        self._known.clear()
        if producer is not None:
            with suppress(Exception):
                await asyncio.wait_for(producer.stop(), self.options.request_timeout)
        if admin is not None:
            with suppress(Exception):
                await admin.close()

    def adopt(self, client: Any) -> None:
        """Apply ``route`` to an aiokafka client before it connects."""
        route = self.route
        if route is None:
            return
        cluster: ClusterMetadata = client.cluster
        original = cluster.broker_metadata

        def routed(node_id: Any) -> BrokerMetadata | None:
            found = original(node_id)
            if found is None:
                return None
            host, port = route(found.host, found.port)
            return BrokerMetadata(found.nodeId, host, port, found.rack)

        cluster.broker_metadata = routed
        bootstrap = getattr(client, "_bootstrap_servers", None)
        if isinstance(bootstrap, list):
            pairs = [tuple(b.rsplit(":", 1)) for b in bootstrap]
            client._bootstrap_servers = [":".join(map(str, route(h, int(p)))) for h, p in pairs]

    def producer(self) -> AIOKafkaProducer:
        """The shared producer, else ``BrokerUnavailable`` (not connected, or closed)."""
        if self._producer is None:
            raise BrokerUnavailable(f"broker {redact(self.url)}: not connected")
        return self._producer

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Send ``messages``, returning once every one is acknowledged by all in-sync replicas."""
        await self.send(
            topic,
            [
                (
                    out.key.encode() if out.key is not None else None,
                    out.payload,
                    topic_headers(out),
                    int(out.published_at * 1000),
                )
                for out in messages
            ],
        )

    async def send(self, topic: str, records: Sequence[Record]) -> None:
        """Send ``(key, value, headers, timestamp_ms)`` records and wait for all of them.

        Records are packed into batches per partition here (``send_batch``),
        not appended one by one: one future per batch instead of per record.
        Keys pick partitions as the Java client does; a call's keyless
        records share one partition.
        """
        if not records:
            return
        await self.ensure_topics([topic])
        producer = self.producer()
        with translated(self.url):
            await producer.client._wait_on_metadata(topic)
            partitions = sorted(producer.client.cluster.partitions_for_topic(topic) or (0,))
            count = len(partitions)
            sticky = partitions[self._next_partition(topic, count)]
            by_partition: dict[int, list[Record]] = {}
            for record in records:
                key = record[0]
                partition = (
                    sticky if key is None else partitions[(murmur2(key) & 0x7FFFFFFF) % count]
                )
                by_partition.setdefault(partition, []).append(record)
            futures = []
            for partition, group in by_partition.items():
                futures += await self._send_partition(producer, topic, partition, group)
            await asyncio.gather(*futures)

    async def _send_partition(
        self, producer: AIOKafkaProducer, topic: str, partition: int, records: list[Record]
    ) -> list[asyncio.Future[Any]]:
        futures = []
        batch = producer.create_batch()
        for key, value, headers, timestamp in records:
            if batch.append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
                    raise BrokerError(
                        f"broker {redact(self.url)}: a record of {len(value)} bytes does not "
                        "fit a batch; raise ?batch_size= (bytes)"
                    )
        if batch.record_count():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures

    def _next_partition(self, topic: str, count: int) -> int:
        turn = self._sticky.get(topic, os.getpid())
        self._sticky[topic] = turn + 1
        return turn % count

    async def ensure_topics(self, topics: Sequence[str], partitions: int | None = None) -> None:
        """Create the topics that do not exist yet (``partitions`` each, else the URL's)."""
        missing = [t for t in topics if t not in self._known]
        if not missing:
            return
        client = self.producer().client
        with translated(self.url):
            cluster = await client.fetch_all_metadata()
            absent = [t for t in missing if not cluster.partitions_for_topic(t)]
            if absent:
                await self._create(absent, partitions or self.options.partitions)
                deadline = time.monotonic() + self.options.request_timeout
                while True:
                    cluster = await client.fetch_all_metadata()
                    if all(cluster.partitions_for_topic(t) for t in absent):
                        break
                    if time.monotonic() > deadline:
                        raise BrokerUnavailable(
                            f"broker {redact(self.url)}: topics {absent} were created "
                            "but do not show in the metadata"
                        )
                    await asyncio.sleep(0.05)
        for t in missing:
            self._known[t] = len(cluster.partitions_for_topic(t) or ()) or 1

    async def _create(self, topics: list[str], partitions: int) -> None:
        admin = self._admin
        if admin is None:
            raise BrokerUnavailable(f"broker {redact(self.url)}: not connected")
        replication = self.options.replication
        new = [NewTopic(t, partitions, replication) for t in topics]
        response = await admin.create_topics(new)
        for name, code, *rest in response.topic_errors:
            error = kafka_errors.for_code(code)
            if code and error is not kafka_errors.TopicAlreadyExistsError:
                raise error(f"creating topic {name!r}: {rest[0] if rest else ''}")

    def partition_count(self, topic: str) -> int:
        """Partitions of a topic ``ensure_topics`` has seen."""
        return self._known.get(topic, 1)

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> KafkaSubscription:
        """Join ``group`` on ``topic`` and its retry topic; returns once partitions are assigned."""
        producer = self.producer()
        await self.ensure_topics([topic])
        count = self.partition_count(topic)
        await self.ensure_topics([retry_topic(topic, group), dlq_topic(topic)], count)
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
        self.adopt(consumer._client)
        wait_for_rebalances(consumer._client, options.join_timeout)
        subscription = KafkaSubscription(self, consumer, topic, group, producer, prefetch, member)
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
        once instead of after its session times out (:mod:`kafka_members`)."""
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
        self.producer()
        return KafkaDeadLetters(self, topic, group)

    def in_background(self, work: asyncio.Future[Any]) -> None:
        """Keep ``work`` (a member leaving over a broken network) until it ends; ``close`` waits."""
        self._background.add(work)
        work.add_done_callback(self._background.discard)
        work.add_done_callback(lambda done: done.cancelled() or done.exception())

    def forget(self, subscription: KafkaSubscription) -> None:
        """Stop tracking a closed subscription."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
