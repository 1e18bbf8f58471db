"""RabbitMQ under faults: what other producers write, silent partitions, crashed members.

Against the shared node at 127.0.0.1:5672, each test on a fresh topic whose
exchanges and queues are deleted afterwards. Malformed and foreign messages
are written frame by frame (tests/brokers/rabbitmq_raw.py), as a producer
in another language can write them.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

import pytest
from pamqp.commands import Basic

from millstream import Message, Millstream, Retry
from millstream.brokers.rabbitmq.broker import RabbitMqBroker
from millstream.errors import RetryableError
from millstream.runtime import ConsumerState
from tests.brokers.rabbitmq_admin import HOST, PORT, SHARED
from tests.brokers.rabbitmq_raw import publish_frames, publish_malformed
from tests.proxy import TcpProxy
from tests.support import events, fetch_n, numbers, until


async def opened(url: str = SHARED) -> RabbitMqBroker:
    broker = RabbitMqBroker.from_url(url)
    await broker.connect()
    return broker


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("millstream.brokers")
    ]


async def test_metadata_another_producer_got_wrong_is_read_with_defaults_and_a_warning(
    topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    ms = Millstream(SHARED, poll_timeout=0.2)
    handled: list[Message] = []

    @ms.consumer(topic, group="billing", retry=Retry(attempts=3, backoff=0.05, jitter=0))
    async def handle(event: dict[str, Any], msg: Message) -> None:
        if "trace" in event.get("malformed", "") and msg.attempt == 1:
            raise RetryableError("once more: the retry is a copy of what was read")
        handled.append(msg)

    async with ms:
        sent = await publish_malformed(SHARED, topic)
        await ms.publish_batch(topic, [{"n": i} for i in range(100)])
        await until(lambda: len(handled) == len(sent) + 100, within=20)
        consumer = ms.consumers["handle"]
        assert consumer.state is ConsumerState.RUNNING
        assert consumer.stats.reconnects == 0

    by_payload = {m.payload: m for m in handled}
    logged = warnings(caplog)
    for field, value, payload in sent:
        got = by_payload[payload]
        retried = "trace" in field
        assert got.attempt == (2 if retried else 1), field
        assert abs(got.published_at - time.time()) < 60, field
        said = [line for line in logged if f"message {got.id!r}" in line]
        assert len(said) == 1 + retried, (field, value, logged)
        assert topic in said[0] and field in said[0] and value in said[0], said


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_an_x_delivery_count_another_producer_wrote_counts_no_delivery(
    topic: str, queue_type: str
) -> None:
    with TcpProxy(HOST, PORT) as proxy:
        crashing = await opened(
            f"amqp://guest:guest@127.0.0.1:{proxy.port}/?queue_type={queue_type}"
        )
        taker = await opened(f"{SHARED}?queue_type={queue_type}")
        try:
            before = await crashing.subscribe(topic, "billing", prefetch=10)
            counted = Basic.Properties(headers={"x-delivery-count": 7})
            await publish_frames(SHARED, topic, [(b"{}", counted, {})], queue_type)
            [first] = await before.fetch(1, 5.0)
            proxy.pause()  # crashes holding it: RabbitMQ counts one return
            proxy.cut()
            after = await taker.subscribe(topic, "billing", prefetch=10)
            [again] = await fetch_n(after, 1)
        finally:
            await crashing.close()
            await taker.close()
    assert (first.attempt, again.attempt) == (1, 2)


async def test_a_foreign_message_keeps_its_id_through_a_retry_and_its_dead_letter(
    topic: str,
) -> None:
    broker = await opened()
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        # No message id: what another tool may send. The same body twice, at
        # different times: two messages, two ids.
        moments = [datetime.datetime(2030, 1, 1, second=s, tzinfo=datetime.UTC) for s in (1, 2)]
        await publish_frames(
            SHARED, topic, [(b'{"n": 1}', Basic.Properties(timestamp=t), {}) for t in moments]
        )
        first, twin = await fetch_n(sub, 2)
        assert first.id != twin.id
        await sub.settle([twin], [(first, 0.0)], [])
        [again] = await sub.fetch(10, 5.0)
        assert (again.id, again.attempt) == (first.id, 2)
        await sub.settle([], [], [(again, "FatalError: no")])
        [letter] = await (await broker.dead_letters(topic, "billing")).list()
        assert (letter.message_id, letter.attempts) == (first.id, 2)
    finally:
        await broker.close()


async def test_what_a_crashed_member_held_is_taken_over_counted_and_logged(
    topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    with TcpProxy(HOST, PORT) as proxy:
        crashing = await opened(f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        restarted = await opened()
        try:
            before = await crashing.subscribe(topic, "billing", prefetch=20, member="web-1.charge")
            await restarted.publish(topic, events(30))
            held = await fetch_n(before, 20)  # the other 10 wait in its window
            await before.settle(held[:5], [], [])
            proxy.pause()  # the process is SIGKILLed: nothing is released
            proxy.cut()
            started = time.monotonic()
            after = await restarted.subscribe(topic, "billing", prefetch=20, member="web-1.charge")
            back = await fetch_n(after, 25, within=10)
            took = time.monotonic() - started
            await after.settle(back, [], [])
        finally:
            await crashing.close()
            await restarted.close()
    assert len(back) == 25 and {m.id for m in held[5:]} <= {m.id for m in back}
    assert {m.attempt for m in back} == {2}
    assert after.taken_over == 25
    said = [line for line in warnings(caplog) if "took over" in line]
    counts = [int(line.split("took over ")[1].split()[0]) for line in said]
    assert sum(counts) == 25 and all("member web-1.charge" in line for line in said), said
    print(f"restart to every held message fetched again: {took:.2f}s")


async def test_a_lost_connection_counts_no_attempt_for_what_was_never_handed_out(
    topic: str,
) -> None:
    with TcpProxy(HOST, PORT) as proxy:
        broker = await opened(f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        try:
            sub = await broker.subscribe(topic, "billing", prefetch=10)
            await broker.publish(topic, events(20))
            [handed] = await sub.fetch(1, 5.0)  # the other 19 wait in its window
            await until(lambda: len(sub._buffer) == 19)
            proxy.cut()
            await until(lambda: sub._lost)
            await sub.close()
            await broker.connect()  # as the supervisor does
            again = await broker.subscribe(topic, "billing", prefetch=10)
            back = await fetch_n(again, 20)
        finally:
            await broker.close()
    attempts = {m.id: m.attempt for m in back}
    assert attempts.pop(handed.id) == 2, "the one handed out was delivered twice"
    assert set(attempts.values()) == {1}, "what no one had counted an attempt"
    assert again.taken_over == 1


async def test_repeated_losses_count_no_attempt_for_what_was_never_handed_out(
    topic: str,
) -> None:
    with TcpProxy(HOST, PORT) as proxy:
        broker = await opened(f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        other = await opened()
        try:
            sub = await broker.subscribe(topic, "billing", prefetch=10)
            await other.publish(topic, events(8))
            for n in range(3):
                [one] = await sub.fetch(1, 5.0)
                # The first of what every lost member only had in its window: no attempt.
                assert (numbers([one]), one.attempt) == ([n], 1)
                await sub.settle([one], [], [])
                await sub.lag()  # the rest are in its window once this is answered
                proxy.cut()
                await until(lambda lost=sub: lost._lost)
                await sub.close()
                await broker.connect()  # as the supervisor does
                sub = await broker.subscribe(topic, "billing", prefetch=10)
            rest = await fetch_n(sub, 5)
            assert (numbers(rest), {m.attempt for m in rest}) == ([3, 4, 5, 6, 7], {1})
            assert sub.taken_over == 0, "none of it was another member's"
            proxy.pause()  # now this process crashes, holding them: that counts, and
            proxy.cut()  # another process knows nothing of the returns before
            taker = await other.subscribe(topic, "billing", prefetch=10)
            assert {m.attempt for m in await fetch_n(taker, 5)} == {5}
        finally:
            await broker.close()
            await other.close()


async def test_deliveries_lost_on_their_way_count_no_attempt(topic: str) -> None:
    with TcpProxy(HOST, PORT) as proxy:
        broker = await opened(f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        other = await opened()
        try:
            sub = await broker.subscribe(topic, "billing", prefetch=10)
            assert await sub.fetch(1, 0.01) == []  # consuming
            proxy.blackhole()
            await other.publish(topic, events(5))
            await sent_to_consumer(other, f"{topic}.billing")  # into the void: none arrives
            proxy.cut()
            proxy.heal()
            await until(lambda: sub._lost)
            await sub.close()
            await broker.connect()
            again = await broker.subscribe(topic, "billing", prefetch=10)
            back = await fetch_n(again, 5)
        finally:
            await broker.close()
            await other.close()
    assert sorted(numbers(back)) == list(range(5))
    assert {m.attempt for m in back} == {1}, "deliveries that never arrived counted"
    assert again.taken_over == 0


async def sent_to_consumer(broker: RabbitMqBroker, queue: str, within: float = 10.0) -> None:
    """Wait until ``queue`` has nothing ready: RabbitMQ sent it all to its consumer."""
    channel = await broker.channel(confirms=False)
    deadline = time.monotonic() + within
    try:
        while (await channel.queue_declare(queue, passive=True)).message_count:
            assert time.monotonic() < deadline, f"{queue} kept messages ready for {within}s"
            await asyncio.sleep(0.02)
    finally:
        await channel.close()
