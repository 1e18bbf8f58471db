"""Kafka under faults: what other producers write, silent partitions, crashed members.

Against the session's Tansu (tests/brokers/tansu.py), each test on a fresh
topic; malformed and foreign records are written with aiokafka's own
producer, as another application would.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from millstream import Message, Millstream
from millstream.runtime import ConsumerState
from tests.brokers.kafka_raw import drop_topics, publish_malformed, publish_raw, raw_producer
from tests.brokers.tansu import Tansu, shared_tansu
from tests.brokers.test_kafka import opened, url
from tests.support import until


@pytest.fixture
def tansu() -> Tansu:
    return shared_tansu()


@pytest.fixture
async def topic(tansu: Tansu) -> AsyncIterator[str]:
    """A topic no other test uses; it and its retry and dead-letter topics go afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    await drop_topics(tansu.address, name)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("millstream.brokers")
    ]


async def test_metadata_another_producer_got_wrong_is_read_with_defaults_and_a_warning(
    tansu: Tansu, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    ms = Millstream(url(tansu, partitions=1), poll_timeout=0.2)
    handled: list[Message] = []

    @ms.consumer(topic, group="billing")
    async def handle(event: dict[str, Any], msg: Message) -> None:
        handled.append(msg)

    async with ms:
        sent = await publish_malformed(tansu.address, topic)
        await ms.publish_batch(topic, [{"n": i} for i in range(100)])
        await until(lambda: len(handled) == len(sent) + 100, within=20)
        consumer = ms.consumers["handle"]
        assert consumer.state is ConsumerState.RUNNING
        assert consumer.stats.reconnects == 0

    by_payload = {m.payload: m for m in handled}
    logged = warnings(caplog)
    for field, value, payload in sent:
        got = by_payload[payload]
        assert got.attempt == 1 and abs(got.published_at - time.time()) < 60, field
        said = [line for line in logged if f"offset {got.offset}:" in line]
        assert len(said) == 1, (field, value, logged)
        assert topic in said[0] and field in said[0] and value in said[0], said
    # An id or key that is not UTF-8 reads the same on every delivery.
    assert {m.id for m in handled if m.id.startswith("\\")} == {"\\xff\\xfe"}
    assert {m.key for m in handled if m.key} == {"\\xff"}


async def test_a_foreign_record_keeps_its_id_through_a_retry_and_its_dead_letter(
    tansu: Tansu, topic: str
) -> None:
    broker = await opened(url(tansu, partitions=1))
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        await publish_raw(tansu.address, topic, b'{"n": 1}')
        [first] = await sub.fetch(10, 5.0)
        await sub.settle([], [(first, 0.0)], [])
        [again] = await sub.fetch(10, 5.0)
        assert (again.id, again.attempt) == (first.id, 2)
        await sub.settle([], [], [(again, "FatalError: no")])
        [letter] = await (await broker.dead_letters(topic, "billing")).list()
        assert (letter.message_id, letter.attempts) == (first.id, 2)
    finally:
        await broker.close()


async def test_dead_letters_another_producer_wrote_badly_are_listed_all_the_same(
    tansu: Tansu, topic: str
) -> None:
    broker = await opened(url(tansu, partitions=1))
    try:
        dlq = await broker.dead_letters(topic, "billing")
        async with raw_producer(tansu.address, f"{topic}.dlq") as producer:
            headers: list[tuple[str, bytes | None]] = [
                ("ms-group", b"billing"),
                ("ms-id", b"\xff"),
                ("ms-attempt", b"abc"),
                ("ms-failed-at", b"soon"),
                ("trace", None),
            ]
            await producer.send_and_wait(f"{topic}.dlq", b"{}", key=b"\xfe", headers=headers)
        [letter] = await dlq.list()
        assert (letter.message_id, letter.key, letter.attempts) == ("\\xff", "\\xfe", 0)
        assert letter.headers == {"trace": ""} and letter.failed_at > 0
        assert await dlq.purge([letter.id]) == 1
    finally:
        await broker.close()
