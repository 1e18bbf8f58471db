"""The RabbitMQ broker under faults: other producers' bytes, lost connections, crashed members.

Against the shared node at 127.0.0.1:5672; what breaks the network goes through
a TCP proxy (tests/proxy.py), what another producer sends goes byte for byte
through tests/brokers/rabbitmq_raw.py. Every test deletes what it declared.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from millstream.brokers import connect
from millstream.brokers.rabbitmq import RabbitMqBroker
from millstream.errors import ConfigError
from millstream.message import Message
from tests.brokers.rabbitmq_admin import HOST, PORT, SHARED, delete_names
from tests.brokers.rabbitmq_raw import malformed
from tests.brokers.scenarios import events, fetch_n, numbers
from tests.conftest import require_service
from tests.proxy import TcpProxy

GROUPS = ("billing",)


@pytest.fixture
async def topic() -> AsyncIterator[str]:
    require_service("RabbitMQ", HOST, PORT)
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    await delete_names(name, GROUPS)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    require_service("RabbitMQ", HOST, PORT)
    with TcpProxy(HOST, PORT) as running:
        yield running


async def opened(url: str) -> RabbitMqBroker:
    broker = RabbitMqBroker.from_url(url)
    await broker.connect()
    return broker


def through(proxy: TcpProxy) -> str:
    return f"amqp://guest:guest@127.0.0.1:{proxy.port}/"


def by_payload(got: list[Message]) -> dict[str, Message]:
    return {json.loads(m.payload)["malformed"]: m for m in got if b"malformed" in m.payload}


def test_the_heartbeat_defaults_to_5s_and_a_wrong_one_names_the_fix() -> None:
    broker = connect("amqp://u:s3cret@mq:5672/")
    assert isinstance(broker, RabbitMqBroker)
    assert broker.options.heartbeat == 5
    assert broker.options.client_url == "amqp://u:s3cret@mq:5672/?heartbeat=5"
    with pytest.raises(ConfigError, match=r"heartbeat='5s'.*heartbeat=5") as caught:
        connect("amqp://u:s3cret@mq:5672/?heartbeat=5s")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_another_producers_malformed_metadata_is_read_with_defaults_and_named(
    topic: str, queue_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = await opened(f"{SHARED}?queue_type={queue_type}")
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=50)
        assert await sub.fetch(1, 0.01) == []  # consuming
        cases = await malformed(HOST, PORT, topic)
        await broker.publish(topic, events(1))
        got = []  # one at a time: each one read the quick way first
        for _ in range(len(cases) + 1):
            got += await sub.fetch(1, 5.0)
        assert numbers(got[-1:]) == [0], "the connection did not survive the malformed ones"
        seen = by_payload(got)
        assert len(seen) == len(cases)
        assert seen["message_id=b'\\xff\\xfe'"].id == "\\xff\\xfe"
        assert seen["ms-key=b'k\\xff'"].key == "k\\xff"
        assert seen["ms-key=42"].key == "42"
        assert seen["ms-id=42"].id == "42"
        assert seen["header name=b'\\xfe\\xff'"].headers == {"\\xfe\\xff": "v"}
        assert seen["headers={'t': {'a': [1, None]}}"].headers == {"t": '{"a":[1,null]}'}
        assert seen["headers={'b': b'\\xff'}"].headers == {"b": "\\xff"}
        assert seen["headers={'sent': <2**63-1>}"].headers == {"sent": str(2**63 - 1)}
        assert {m.attempt for m in got} == {1}, "a producer's counter counted"
        for stamped in ("timestamp=2**63-1", "ms-published-at='yesterday'"):
            assert abs(seen[stamped].published_at - time.time()) < 60

        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for field, value in [
            ("message_id", "'\\\\xff\\\\xfe'"),
            ("header ms-key", "b'k\\xff'"),
            ("header ms-published-at", "'yesterday'"),
            ("header ms-attempt", "-3"),
            ("property timestamp", str(2**63 - 1)),
            ("header t", "{'a': [1, None]}"),
        ]:
            named = [w for w in warnings if topic in w and f"{field} " in w and value in w]
            assert named, f"no warning names {field}={value}: {warnings}"

        # Copies of them (retry, dead letter) can be written back and keep their id.
        odd = [seen["message_id=b'\\xff\\xfe'"], seen["headers={'b': b'\\xff'}"]]
        await sub.settle(
            [m for m in got if m not in odd], [(odd[0], 0)], [(odd[1], "FatalError: no")]
        )
        [again] = await fetch_n(sub, 1)
        assert (again.id, again.attempt) == (odd[0].id, 2)
        dlq = await broker.dead_letters(topic, "billing")
        [letter] = await dlq.list()
        assert (letter.message_id, letter.headers) == (odd[1].id, {"b": "\\xff"})
    finally:
        await broker.close()


async def test_a_crashed_members_messages_are_taken_over_and_counted(
    topic: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    crashing = await opened(through(proxy))
    survivor = await opened(SHARED)
    try:
        doomed = await crashing.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        await crashing.publish(topic, events(10))
        assert len(await fetch_n(doomed, 4)) == 4  # and the other 6 sit in its window
        await doomed.lag()  # the 6 are in by the time its answer is
        proxy.pause()
        proxy.cut()  # it crashed: it never releases anything

        sub = await survivor.subscribe(topic, "billing", prefetch=10, member="web-2.charge")
        caplog.clear()
        first = await sub.fetch(1, 5.0)  # starts consuming
        await sub.lag()  # the other 9 are in by the time its answer is
        got = first + await sub.fetch(10, 0)
        assert sorted(numbers(got)) == list(range(10))
        assert {m.attempt for m in got} == {2}, "a crash counts, handed out or not"
        assert sub.taken_over == 10
        said = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
        assert [line.split(":")[1].split(" of ")[0] for line in said] == [
            " member web-2.charge took over 1 message(s)",
            " member web-2.charge took over 9 message(s)",
        ]
        assert all(topic in line and "stopped without releasing" in line for line in said)
    finally:
        await crashing.close()
        await survivor.close()


async def test_deliveries_lost_unhanded_are_no_attempt_but_a_crash_counts(
    topic: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    broker = await opened(through(proxy))
    other = await opened(SHARED)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        await other.publish(topic, events(8))
        for n in range(3):
            [one] = await sub.fetch(1, 5.0)
            # The first of what the lost members only had in their windows: no attempt.
            assert (numbers([one]), one.attempt) == ([n], 1)
            await sub.settle([one], [], [])
            await sub.lag()  # the rest are in its window by the time its answer is
            proxy.cut()
            await sub.close()
            await broker.connect()
            sub = await broker.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        rest = await fetch_n(sub, 5)
        assert (numbers(rest), {m.attempt for m in rest}) == ([3, 4, 5, 6, 7], {1})
        assert sub.taken_over == 5
        assert any("held by web-1.charge in this process" in r.getMessage() for r in caplog.records)

        proxy.pause()
        proxy.cut()  # now it crashes with them handed out: another process counts that,
        taker = await other.subscribe(topic, "billing", prefetch=10)  # and every return
        assert {m.attempt for m in await fetch_n(taker, 5)} == {5}
    finally:
        await broker.close()
        await other.close()


async def test_deliveries_lost_on_the_wire_are_no_attempt(topic: str, proxy: TcpProxy) -> None:
    broker = await opened(through(proxy))
    other = await opened(SHARED)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        assert await sub.fetch(1, 0.01) == []  # consuming
        proxy.blackhole()
        await other.publish(topic, events(5))
        await until_sent(other, f"{topic}.billing")  # into the void: none arrives
        proxy.cut()
        proxy.heal()
        await sub.close()
        await broker.connect()
        sub = await broker.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        got = await fetch_n(sub, 5)
        assert sorted(numbers(got)) == list(range(5))
        assert {m.attempt for m in got} == {1}, "deliveries that never arrived counted"
    finally:
        await broker.close()
        await other.close()


async def until_sent(broker: RabbitMqBroker, queue: str, within: float = 10.0) -> None:
    """Wait until ``queue`` has nothing ready: RabbitMQ sent it all to its consumer."""
    channel = await broker.channel(confirms=False)
    deadline = time.monotonic() + within
    try:
        while (await channel.queue_declare(queue, passive=True)).message_count:
            assert time.monotonic() < deadline, f"{queue} kept messages ready for {within}s"
            await asyncio.sleep(0.02)
    finally:
        await channel.close()
