"""The running consumer against each broker: its lag in health, a cut connection, a refusal."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

from millstream import Millstream, connect
from millstream.runtime import ConsumerState
from tests.conformance.factory import BrokerFactory, group_of, needs
from tests.conftest import report
from tests.proxy import TcpProxy
from tests.support import at_least, consumer_lag, events, until, until_equal


async def test_lag_is_reported_in_the_consumer_health(brokers: BrokerFactory, topic: str) -> None:
    """25 messages wait for a paused consumer: its lag and its health document say 25."""
    needs(brokers, "lag", "a lag check")
    ms = Millstream(broker=brokers.open(), poll_timeout=0.2)

    @ms.consumer(topic, group=group_of(topic))
    async def handle(event: dict[str, int]) -> None:
        pass

    async with ms:
        consumer = ms.consumers["handle"]
        consumer.pause()
        await asyncio.sleep(0.5)  # a fetch under way when pausing has returned
        await ms.publish_batch(topic, [{"n": i} for i in range(25)])
        lag = await consumer.lag()
        assert lag is not None and lag.total == 25

        health = pytest.importorskip("millstream.observability.health")
        [summary] = await health.collect([consumer])
        document = health.Health(ms.broker.url, True, False, [summary]).document()
        assert document["components"]["consumers"]["components"]["handle"]["details"]["lag"] == 25

        consumer.resume()
        await until_equal(lambda: consumer_lag(ms), 0)


async def test_a_cut_connection_mid_stream_loses_nothing(
    brokers: BrokerFactory, topic: str
) -> None:
    """Four waves of 250 messages, the consumer's connection cut in each: all are handled,
    the lag comes back to 0, and handlers in flight at a cut run again only a few times."""
    broker = brokers.open()
    ms = Millstream(broker=broker, reconnect_backoff=0.05, poll_timeout=0.2)
    publisher = await brokers.connect()  # a connection of its own: publishing goes on
    handled: list[int] = []

    @ms.consumer(topic, group=group_of(topic), concurrency=4)
    async def handle(event: dict[str, int]) -> None:
        await asyncio.sleep(0.002)
        handled.append(event["n"])

    waves = 4
    async with ms:
        consumer = ms.consumers["handle"]
        for wave in range(waves):
            await publisher.publish(topic, events(250, start=wave * 250))
            await until(at_least(handled, wave * 250 + 50), within=10)
            brokers.cut(broker)
            await until(lambda: consumer.state is ConsumerState.RECONNECTING, within=5)
            await until(
                lambda: consumer.state is ConsumerState.RUNNING, within=brokers.back_after_cut
            )
        await until(lambda: len(set(handled)) == waves * 250, within=20)
        await until_equal(lambda: consumer_lag(ms), 0)

    assert set(handled) == set(range(waves * 250))
    assert consumer.stats.reconnects >= waves
    report(
        f"cut mid-stream [{brokers.name}]",
        cuts=waves,
        published=waves * 250,
        duplicates=len(handled) - waves * 250,
        reconnects=consumer.stats.reconnects,
    )
    # Handlers in flight finish and settle over a fresh connection: few run twice.
    assert len(handled) - waves * 250 <= waves * 256


async def test_a_wrong_password_fails_the_consumer_without_a_retry_storm(
    brokers: BrokerFactory, topic: str, tmp_path: Path
) -> None:
    """The consumer keeps trying while the server is unreachable, then fails at its
    refusal of the password and stops connecting; the error hides the password."""
    needs(brokers, "refusing", "a wrong password")
    assert brokers.refusing is not None
    with (
        brokers.refusing(tmp_path) as server,
        TcpProxy("127.0.0.1", server.port) as proxy,
    ):
        proxy.pause()  # unreachable at start: the consumer keeps trying...
        ms = Millstream(server.url(proxy.port), reconnect_backoff=0.05)

        @ms.consumer(topic, group=group_of(topic))
        async def handle(event: dict[str, int]) -> None:
            pass

        async with ms:
            consumer = ms.consumers["handle"]
            await until(lambda: consumer.state is ConsumerState.RECONNECTING, within=5)
            proxy.resume()  # ...until the server answers, and refuses the password
            await until(lambda: consumer.state is ConsumerState.FAILED, within=5)
            attempts = proxy.accepted
            await asyncio.sleep(1.0)
            assert proxy.accepted == attempts <= 2, "kept connecting after the refusal"
            assert consumer.state is ConsumerState.FAILED
            error = consumer.stats.last_error or ""
            assert "refused the credentials" in error and server.redacted in error


async def test_a_burst_spreads_over_the_members_of_a_group(
    brokers: BrokerFactory, topic: str
) -> None:
    """300 keyed messages published at once to a group of three members whose handler takes
    a few milliseconds: no member takes the burst for itself; each handles within 1.5x of an
    even share (a member fetches only what its workers can start soon)."""
    group = group_of(topic)
    handled: dict[int, int] = {0: 0, 1: 0, 2: 0}
    apps = []
    for index in range(3):
        # Partitions are what a group shares on Kafka: as many as the members need.
        url = brokers.group_url if brokers.capabilities.partitions else None
        broker = connect(url) if url is not None else brokers.open()
        ms = Millstream(broker=broker, poll_timeout=0.2, member=f"m{index}")

        def count(index: int = index) -> None:
            handled[index] += 1

        @ms.consumer(topic, group=group)
        async def slow(event: dict[str, int], count: Callable[[], None] = count) -> None:
            await asyncio.sleep(0.003)
            count()

        apps.append(ms)
    async with contextlib.AsyncExitStack() as stack:
        for ms in apps:
            await stack.enter_async_context(ms)
        await asyncio.sleep(brokers.members_join)
        await apps[0].publish_batch(topic, [{"n": n} for n in range(300)], key_by="n")
        await until(lambda: sum(handled.values()) == 300, within=30)
    report(
        f"burst of 300 over three members [{brokers.name}]",
        **{f"m{i}": n for i, n in handled.items()},
    )
    assert max(handled.values()) <= 150 and min(handled.values()) >= 100 / 1.5, handled
