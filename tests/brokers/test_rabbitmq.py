"""The RabbitMQ broker beyond the shared conformance suite, against the real node at 127.0.0.1:5672.

Every test uses a fresh topic and deletes what it declared. Tests that break
the network put a TCP proxy in between (tests/proxy.py); the one that stops
the node (``rabbitmqctl stop_app``) keeps the outage short and always starts
it again, since other tests share it.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid

import aiormq
import pytest

from millstream import Millstream
from millstream.brokers import connect
from millstream.brokers.rabbitmq.broker import RabbitMqBroker
from millstream.brokers.rabbitmq.wire import retry_step
from millstream.errors import AuthenticationError, ConfigError
from millstream.runtime import ConsumerState
from tests.proxy import TcpProxy
from tests.support import (
    at_least,
    consumer_lag,
    drain,
    events,
    fetch_n,
    numbers,
    total_lag,
    until,
    until_equal,
)

GROUPS = ("billing", "shipping")


async def opened(url: str) -> RabbitMqBroker:
    broker = RabbitMqBroker.from_url(url)
    await broker.connect()
    return broker


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


# -- URL and connection -------------------------------------------------------


def test_url_parameters_are_read_and_mistakes_name_the_fix() -> None:
    broker = connect("amqps://app:s3cret@mq.internal:5671/orders?queue_type=classic&heartbeat=5")
    assert isinstance(broker, RabbitMqBroker)
    assert broker.options.queue_type == "classic"
    assert broker.options.client_url == "amqps://app:s3cret@mq.internal:5671/orders?heartbeat=5"
    default = connect("amqp://127.0.0.1")
    assert isinstance(default, RabbitMqBroker) and default.options.queue_type == "quorum"

    for url, words in [
        ("amqp://u:s3cret@127.0.0.1/?queue_type=stream", ["queue_type='stream'", "u:***@"]),
        ("amqp://", ["has no host", "amqp://user:password@host:5672/vhost"]),
        ("amqp://127.0.0.1:notaport/", ["invalid port"]),
    ]:
        with pytest.raises(ConfigError) as caught:
            connect(url)
        assert all(word in str(caught.value) for word in words), str(caught.value)
        assert "s3cret" not in str(caught.value)


def test_retry_delays_round_up_to_a_step_never_down() -> None:
    assert retry_step(0) == 0 and retry_step(-1) == 0
    assert retry_step(0.001) == 50 and retry_step(0.05) == 50
    assert retry_step(1.0) == 1000 and retry_step(1.01) == 1500
    for delay in (0.07, 0.4, 2.5, 17.0, 100.0, 1000.0):
        step = retry_step(delay)
        assert delay * 1000 <= step <= delay * 1000 * 5 / 3
    assert retry_step(86_400) == 3_600_000  # capped at an hour


# -- mapping ----------------------------------------------------------------------


async def test_a_long_retry_does_not_hold_up_a_short_one(shared: str, topic: str) -> None:
    broker = await opened(shared)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        await broker.publish(topic, events(2))
        slow, fast = await fetch_n(sub, 2)
        await sub.settle([], [(slow, 30.0), (fast, 0.1)], [])
        [back] = await sub.fetch(10, 2.0)
        assert back.id == fast.id
        assert await total_lag(sub) == 2  # the slow one waits in its retry queue, counted
    finally:
        await broker.close()


async def test_acks_out_of_order_settle_exactly_what_was_acked(shared: str, topic: str) -> None:
    broker = await opened(shared)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=50)
        await broker.publish(topic, events(6))
        got = await fetch_n(sub, 6)
        assert numbers(got) == [0, 1, 2, 3, 4, 5]
        await sub.settle([got[1], got[2], got[5]], [], [])  # 0, 3 and 4 still held
        assert await total_lag(sub) == 3
        await sub.settle([got[4], got[0]], [], [])
        assert await total_lag(sub) == 1
        await sub.settle([got[3], got[3]], [], [])  # twice in a batch: acked once
        await sub.settle([got[0]], [], [])  # already settled: skipped, no channel error
        assert await total_lag(sub) == 0
        assert await sub.fetch(10, 0.3) == []
    finally:
        await broker.close()


async def test_a_backlog_published_before_any_group_goes_to_the_first(
    shared: str, topic: str
) -> None:
    broker = await opened(shared)
    try:
        await broker.publish(topic, events(700))  # no group yet: kept in <topic>.unrouted
        first = await broker.subscribe(topic, "billing", prefetch=100)
        later = await broker.subscribe(topic, "shipping", prefetch=100)
        await broker.publish(topic, events(1, start=700))
        assert sorted(numbers(await drain(first))) == list(range(701))
        assert numbers(await drain(later)) == [700]  # a queue holds what came after it
    finally:
        await broker.close()


async def test_close_releases_at_the_same_attempt_and_a_crash_counts_one(
    shared: str, topic: str, proxy: TcpProxy
) -> None:
    broker = await opened(shared)
    crashing = await opened(f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=300)
        await broker.publish(topic, events(300))
        held = await fetch_n(sub, 50)  # and the rest sit in its window, unseen
        assert len(held) == 50
        await sub.close()

        doomed = await crashing.subscribe(topic, "billing", prefetch=300)
        assert len(await fetch_n(doomed, 300)) == 300
        proxy.pause()
        proxy.cut()
        again = await broker.subscribe(topic, "billing", prefetch=300)
        redelivered = await drain(again)
        assert sorted(numbers(redelivered)) == list(range(300))
        assert {m.attempt for m in redelivered} == {2}
    finally:
        await crashing.close()
        await broker.close()


async def test_dead_letters_list_replay_and_purge_by_stable_ids(shared: str, topic: str) -> None:
    broker = await opened(shared)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        await broker.publish(topic, events(4))
        got = await fetch_n(sub, 4)
        await sub.settle([], [], [(m, f"FatalError: {i}") for i, m in enumerate(got)])
        dlq = await broker.dead_letters(topic, "billing")
        listed = await dlq.list()
        assert [x.error for x in listed] == [
            "FatalError: 3",
            "FatalError: 2",
            "FatalError: 1",
            "FatalError: 0",
        ]
        assert [x.id for x in await dlq.list()] == [x.id for x in listed], "ids changed"
        assert await dlq.purge([listed[0].id, "no-such-id"]) == 1
        assert await dlq.replay([listed[2].id]) == 1
        assert await dlq.replay([listed[2].id]) == 0
        assert [x.error for x in await dlq.list()] == ["FatalError: 2", "FatalError: 0"]
        [back] = await sub.fetch(10, 1.0)
        assert (back.id, back.attempt, back.headers) == (got[1].id, 1, {})
        await sub.settle([back], [], [])
        nowhere = await broker.dead_letters(f"{topic}-none", "billing")
        assert (await nowhere.count(), await nowhere.list(), await nowhere.purge()) == (0, [], 0)
    finally:
        await broker.close()


# -- the running consumer -------------------------------------------------------------


async def test_lag_is_reported_in_health_and_metrics(shared: str, topic: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tests.web import serving

    ms = Millstream(shared, poll_timeout=0.1)

    @ms.consumer(topic, group="billing")
    async def handle(event: dict[str, int]) -> None:
        pass

    async with serving(ms.fastapi()) as http:
        consumer = ms.consumers["handle"]
        consumer.pause()
        await asyncio.sleep(0.3)  # a fetch already waiting would still take some
        await ms.publish_batch(topic, [{"n": i} for i in range(25)])
        await until_equal(lambda: consumer_lag(ms), 25)

        health = (await http.get("/actuator/health")).json()
        assert health["components"]["consumers"]["components"]["handle"]["details"]["lag"] == 25
        lags = [
            sample.value
            for family in text_string_to_metric_families((await http.get("/metrics")).text)
            for sample in family.samples
            if sample.name == "millstream_consumer_lag" and sample.labels["consumer"] == "handle"
        ]
        assert lags == [25]

        consumer.resume()
        await until_equal(lambda: consumer_lag(ms), 0)


async def test_a_deleted_queue_is_declared_again_and_consuming_goes_on(
    shared: str, topic: str
) -> None:
    ms = Millstream(shared, reconnect_backoff=0.05, poll_timeout=0.2)
    handled: list[int] = []

    @ms.consumer(topic, group="billing")
    async def handle(event: dict[str, int]) -> None:
        handled.append(event["n"])

    async with ms:
        consumer = ms.consumers["handle"]
        await ms.publish_batch(topic, [{"n": 0}])
        await until(lambda: handled == [0])
        connection = await aiormq.connect(shared)
        channel = await connection.channel()
        await channel.queue_delete(f"{topic}.billing")  # an operator, a policy, ...
        await connection.close()
        await until(lambda: consumer.stats.reconnects >= 1, within=5)
        await until(lambda: consumer.state is ConsumerState.RUNNING, within=5)
        await ms.publish_batch(topic, [{"n": 1}])
        await until(lambda: handled == [0, 1])


@pytest.mark.slow
async def test_the_node_stopping_and_starting_loses_nothing(shared: str, topic: str) -> None:
    ms = Millstream(shared, reconnect_backoff=0.1, reconnect_max_backoff=0.5, poll_timeout=0.2)
    handled: list[int] = []

    @ms.consumer(topic, group="billing", concurrency=4)
    async def handle(event: dict[str, int]) -> None:
        await asyncio.sleep(0.002)
        handled.append(event["n"])

    async with ms:
        consumer = ms.consumers["handle"]
        await ms.publish_batch(topic, [{"n": i} for i in range(600)])
        await until(at_least(handled, 100), within=10)
        try:
            await asyncio.to_thread(rabbitmqctl, "stop_app")
            await until(lambda: consumer.state is ConsumerState.RECONNECTING, within=10)
        finally:
            await asyncio.to_thread(rabbitmqctl, "start_app")
        await until(lambda: consumer.state is ConsumerState.RUNNING, within=30)
        await ms.publish_batch(topic, [{"n": i} for i in range(600, 700)])
        await until(lambda: len(set(handled)) == 700, within=30)

    assert set(handled) == set(range(700))


@pytest.mark.slow
async def test_missing_permissions_name_the_fix(shared: str) -> None:
    user = f"ms-test-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(rabbitmqctl, "add_user", user, "pw")
    try:
        with pytest.raises(AuthenticationError, match="virtual host"):
            await opened(f"amqp://{user}:pw@127.0.0.1:5672/")
        await asyncio.to_thread(rabbitmqctl, "set_permissions", user, "^$", ".*", ".*")
        broker = await opened(f"amqp://{user}:pw@127.0.0.1:5672/")
        try:
            with pytest.raises(AuthenticationError, match="set_permissions"):
                await broker.subscribe("payments-never-declared", "billing", prefetch=10)
        finally:
            await broker.close()
    finally:
        await asyncio.to_thread(rabbitmqctl, "delete_user", user)


# -- several processes ------------------------------------------------------------


async def test_raw_amqp_publishers_are_read(shared: str, topic: str) -> None:
    """Another tool's message: no millstream headers, maybe no message id."""
    broker = await opened(shared)
    connection = await aiormq.connect(shared)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        channel = await connection.channel()
        await channel.basic_publish(
            b'{"n": 1}',
            exchange=topic,
            properties=aiormq.spec.Basic.Properties(headers={"h": "v", "n": 7}),
        )
        [theirs] = await sub.fetch(10, 1.0)
        assert (theirs.payload, theirs.key, theirs.headers) == (
            b'{"n": 1}',
            None,
            {"h": "v", "n": "7"},
        )
        assert theirs.id and theirs.attempt == 1
        assert abs(theirs.published_at - time.time()) < 5
        await sub.settle([theirs], [], [])
    finally:
        await connection.close()
        await broker.close()
