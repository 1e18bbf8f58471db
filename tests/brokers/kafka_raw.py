"""Kafka as other applications write it: aiokafka's own producer, and cleaning up after tests.

:func:`publish_malformed` writes one record per way another producer can
get millstream's metadata wrong; :func:`publish_raw` writes a record with no
metadata at all. Both make the topic first (one partition unless told), as
a raw producer would otherwise leave its partition count to the broker.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

__all__ = ["MALFORMED", "drop_topics", "publish_malformed", "publish_raw", "raw_producer"]

# (field, its value as a log line shows it, record key, headers).
MALFORMED: list[tuple[str, str, bytes | None, list[tuple[str, bytes | None]]]] = [
    ("ms-attempt", "abc", None, [("ms-attempt", b"abc")]),
    ("ms-attempt", "-3", None, [("ms-attempt", b"-3")]),
    ("ms-published-at", "abc", None, [("ms-published-at", b"abc")]),
    ("ms-published-at", "nan", None, [("ms-published-at", b"nan")]),
    ("ms-id", r"\xff\xfe", None, [("ms-id", b"\xff\xfe")]),
    ("ms-id", "None", None, [("ms-id", None)]),
    ("key", r"\xff", b"\xff", []),
    ("trace", r"\xff", None, [("trace", b"\xff")]),
    ("trace", "None", None, [("trace", None)]),
]


async def publish_malformed(address: str, topic: str) -> list[tuple[str, str, bytes]]:
    """One record per entry of :data:`MALFORMED`; returns (field, value, payload) of each."""
    sent: list[tuple[str, str, bytes]] = []
    async with raw_producer(address, topic) as producer:
        for field, value, key, headers in MALFORMED:
            payload = json.dumps({"malformed": f"{field}={value}"}).encode()
            await producer.send_and_wait(topic, payload, key=key, headers=headers)
            sent.append((field, value, payload))
    return sent


async def publish_raw(address: str, topic: str, payload: bytes) -> None:
    """A record with no headers at all: what a producer that is not millstream writes."""
    async with raw_producer(address, topic) as producer:
        await producer.send_and_wait(topic, payload)


@contextlib.asynccontextmanager
async def raw_producer(
    address: str, topic: str, partitions: int = 1
) -> AsyncIterator[AIOKafkaProducer]:
    """aiokafka's producer on ``address``; ``topic`` is made first if missing."""
    admin = AIOKafkaAdminClient(bootstrap_servers=address)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            with contextlib.suppress(Exception):  # made meanwhile
                await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=address, enable_idempotence=False)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def drop_topics(address: str, prefix: str) -> None:
    """Delete every topic whose name starts with ``prefix`` (a test's topic and its
    retry and dead-letter topics); what fails is left."""
    admin = AIOKafkaAdminClient(bootstrap_servers=address)
    with contextlib.suppress(Exception):
        await admin.start()
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    with contextlib.suppress(Exception):
        await admin.close()
