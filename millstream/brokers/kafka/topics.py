"""Writing to Kafka topics: created on first use, records sent in batches per partition.

Keys pick partitions as the Java client does (murmur2); a call's keyless
records share one partition, which keeps them in order and batched, and
the next call's go to the next partition. Records are packed into batches
per partition here (``send_batch``), not appended one by one: one future
per batch instead of per record.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.admin import NewTopic
from aiokafka.partitioner import murmur2

from millstream.brokers.kafka.connection import KafkaConnection, translated
from millstream.brokers.kafka.wire import Record
from millstream.errors import BrokerError, BrokerUnavailable
from millstream.urls import redact

__all__ = ["ensure_topics", "send"]


async def send(connection: KafkaConnection, topic: str, records: Sequence[Record]) -> None:
    """Send ``records`` to ``topic`` and wait until all in-sync replicas have every one."""
    if not records:
        return
    await ensure_topics(connection, [topic])
    producer = connection.producer()
    with translated(connection.url):
        await producer.client._wait_on_metadata(topic)
        partitions = sorted(producer.client.cluster.partitions_for_topic(topic) or (0,))
        count = len(partitions)
        sticky = partitions[_next_partition(connection, topic, count)]
        by_partition: dict[int, list[Record]] = {}
        for record in records:
            key = record[0]
            partition = sticky if key is None else partitions[(murmur2(key) & 0x7FFFFFFF) % count]
            by_partition.setdefault(partition, []).append(record)
        futures = []
        for partition, group in by_partition.items():
            futures += await _send_partition(connection.url, producer, topic, partition, group)
        await asyncio.gather(*futures)


async def _send_partition(
    url: str, producer: AIOKafkaProducer, topic: str, partition: int, records: list[Record]
) -> list[asyncio.Future[Any]]:
    futures = []
    batch = producer.create_batch()
    for key, value, headers, timestamp in records:
        if batch.append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=timestamp, headers=headers) is None:
                raise BrokerError(
                    f"broker {redact(url)}: a record of {len(value)} bytes does not "
                    "fit a batch; raise ?batch_size= (bytes)"
                )
    if batch.record_count():
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


def _next_partition(connection: KafkaConnection, topic: str, count: int) -> int:
    turns = connection.turns
    turn = turns.get(topic, os.getpid())
    turns[topic] = turn + 1
    return turn % count


async def ensure_topics(
    connection: KafkaConnection, topics: Sequence[str], partitions: int | None = None
) -> None:
    """Create the topics that do not exist yet (``partitions`` each, else the URL's)."""
    known = connection.topics
    missing = [t for t in topics if t not in known]
    if not missing:
        return
    client = connection.producer().client
    url = connection.url
    with translated(url):
        cluster = await client.fetch_all_metadata()
        absent = [t for t in missing if not cluster.partitions_for_topic(t)]
        if absent:
            await _create(connection, absent, partitions or connection.options.partitions)
            deadline = time.monotonic() + connection.options.request_timeout
            while True:
                cluster = await client.fetch_all_metadata()
                if all(cluster.partitions_for_topic(t) for t in absent):
                    break
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(
                        f"broker {redact(url)}: topics {absent} were created "
                        "but do not show in the metadata"
                    )
                await asyncio.sleep(0.05)
    for t in missing:
        known[t] = len(cluster.partitions_for_topic(t) or ()) or 1


async def _create(connection: KafkaConnection, topics: list[str], partitions: int) -> None:
    admin = connection.admin()
    replication = connection.options.replication
    new = [NewTopic(t, partitions, replication) for t in topics]
    response = await admin.create_topics(new)
    for name, code, *rest in response.topic_errors:
        error = kafka_errors.for_code(code)
        if code and error is not kafka_errors.TopicAlreadyExistsError:
            raise error(f"creating topic {name!r}: {rest[0] if rest else ''}")
