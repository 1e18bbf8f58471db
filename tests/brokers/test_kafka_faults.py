"""Kafka under faults: what other producers write, and members coming and going.

Against the session's Tansu (tests/brokers/tansu.py), each test on a fresh
topic; malformed and foreign records are written with aiokafka's own
producer, as another application would.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from millstream import Message, Millstream
from millstream.runtime import ConsumerState
from tests.brokers.kafka_raw import publish_malformed, raw_producer
from tests.brokers.tansu import Tansu
from tests.brokers.test_kafka import fetch_n, opened, url
from tests.support import events, until


@pytest.fixture
def group(topic: str) -> str:
    """A group no other test uses: Tansu can take long to let a member into a group
    where another test left a crashed one."""
    return f"{topic}-billing"


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("millstream.brokers")
    ]


async def test_metadata_another_producer_got_wrong_is_read_with_defaults_and_a_warning(
    tansu: Tansu, topic: str, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    ms = Millstream(url(tansu, partitions=1), poll_timeout=0.2)
    handled: list[Message] = []

    @ms.consumer(topic, group=group)
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


async def test_dead_letters_another_producer_wrote_badly_are_listed_all_the_same(
    tansu: Tansu, topic: str, group: str
) -> None:
    broker = await opened(url(tansu, partitions=1))
    try:
        dlq = await broker.dead_letters(topic, group)
        async with raw_producer(tansu.address, f"{topic}.dlq") as producer:
            headers: list[tuple[str, bytes | None]] = [
                ("ms-group", group.encode()),
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


async def test_a_rebalance_counts_no_attempt_for_messages_no_one_handed_out(
    tansu: Tansu, topic: str, group: str, caplog: pytest.LogCaptureFixture
) -> None:
    address = url(tansu, partitions=1)
    first_broker, second_broker = await opened(address), await opened(address)
    try:
        first = await first_broker.subscribe(topic, group, prefetch=10)
        await first_broker.publish(topic, events(5))
        done = await fetch_n(first, 3)
        await first.settle(done, [], [])
        # A second member joins: the first gives its partition up (nothing in
        # flight) and gets it back, the older member keeping the partition.
        await second_broker.subscribe(topic, group, prefetch=10)
        rest = await fetch_n(first, 2, within=10)
    finally:
        await first_broker.close()
        await second_broker.close()
    assert [m.offset for m in rest] == [3, 4]
    assert {m.attempt for m in rest} == {1}, "counted as handed out before"
    assert first.taken_over == 0
    assert not [line for line in warnings(caplog) if "took over" in line]
