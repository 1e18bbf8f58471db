"""The Kafka broker beyond the shared conformance suite, against Tansu (tests/brokers/tansu.py).

Most tests use the session's Tansu, each on a fresh topic. Tests that
restart a broker start a private one; tests that break the network put a
TCP proxy in front of every connection (the adapter's ``route``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from millstream import Message, Millstream, OutgoingMessage
from millstream.brokers import connect
from millstream.brokers.base import Subscription
from millstream.brokers.kafka.broker import KafkaBroker
from millstream.errors import AuthenticationError, ConfigError
from millstream.runtime import ConsumerRuntime, ConsumerState
from tests import support
from tests.brokers.redis_server import free_port
from tests.brokers.tansu import QUIRKS, Tansu, via
from tests.proxy import TcpProxy
from tests.support import consumer_lag, events, total_lag, until, until_equal


def url(tansu: Tansu, partitions: int = 4) -> str:
    return tansu.url(f"partitions={partitions}&{QUIRKS}")


async def opened(address: str, proxy: TcpProxy | None = None) -> KafkaBroker:
    broker = KafkaBroker(address, route=via(proxy) if proxy else None)
    await broker.connect()
    return broker


@contextlib.asynccontextmanager
async def two_brokers(address: str) -> AsyncIterator[tuple[KafkaBroker, KafkaBroker]]:
    """Two connected brokers, as two members' processes would have; closed afterwards."""
    first, second = await opened(address), await opened(address)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def fetch_n(sub: Subscription, count: int, within: float = 5.0) -> list[Message]:
    """Fetch until ``count`` messages came (one-record batches arrive one by one)."""
    return await support.fetch_n(sub, count, within, wait=0.2)


# -- URL and connection -------------------------------------------------------


def test_url_parameters_are_read_and_mistakes_name_the_fix() -> None:
    broker = connect("kafka://app:s3cret@k1:9092,k2:9093?partitions=12&drain=2.5&idempotence=false")
    assert isinstance(broker, KafkaBroker)
    options = broker.options
    assert options.bootstrap == ("k1:9092", "k2:9093")
    assert (options.partitions, options.drain, options.idempotence) == (12, 2.5, False)
    assert (options.username, options.password) == ("app", "s3cret")
    assert options.client()["security_protocol"] == "SASL_PLAINTEXT"

    for bad, words in [
        ("kafka://k1:9092?partitions=0", ["partitions='0'", "1 or more", "?partitions=8"]),
        ("kafka://app:s3cret@k1:9092?linger=soon", ["linger='soon'", "kafka://app:***@"]),
        ("kafka://k1:9092?colour=red", ["unknown parameter 'colour'", "partitions"]),
        ("kafka://k1?partitions=1", ["'k1' is not host:port"]),
        ("kafka://k1:9092?idempotence=maybe", ["idempotence='maybe'", "true or false"]),
    ]:
        with pytest.raises(ConfigError) as caught:
            connect(bad)
        assert all(word in str(caught.value) for word in words), str(caught.value)
        assert "s3cret" not in str(caught.value)


async def test_a_consumer_of_a_wrong_address_retries_with_backoff_not_a_storm() -> None:
    port = free_port()
    with TcpProxy("127.0.0.1", port) as nowhere:
        ms = Millstream(f"kafka://127.0.0.1:{nowhere.port}?{QUIRKS}", reconnect_backoff=0.2)

        @ms.consumer("payments", group="billing")
        async def handle(event: dict[str, int]) -> None:
            pass

        async with ms:  # the app starts; the consumer keeps trying, backing off
            consumer = ms.consumers["handle"]
            await until(lambda: consumer.state is ConsumerState.RECONNECTING, within=5)
            await asyncio.sleep(2.0)
            assert nowhere.refused <= 12, f"{nowhere.refused} connection attempts in 2s"
            assert "unreachable" in (consumer.stats.last_error or "")


async def test_a_host_that_does_not_exist_fails_the_start_and_the_consumer_with_the_fix() -> None:
    url_ = f"kafka://no-such-host.invalid:9092?{QUIRKS}"
    ms = Millstream(url_)

    @ms.consumer("payments", group="billing")
    async def handle(event: dict[str, int]) -> None:
        pass

    with pytest.raises(ConfigError, match=r"no host named no-such-host\.invalid exists"):
        await ms.start()  # a bad config fails at start, naming the fix
    await ms.stop()

    # A consumer whose broker cannot be found fails instead of retrying for ever.
    broker = KafkaBroker.from_url(url_)
    runtime = ConsumerRuntime(ms.specs["handle"], broker, ms.settings)
    await runtime.start()
    try:
        await until(lambda: runtime.state is ConsumerState.FAILED, within=10)
        assert "no-such-host.invalid" in (runtime.stats.last_error or "")
    finally:
        await runtime.stop()
        await broker.close()


async def test_a_wrong_password_is_refused_at_connect_with_the_fix() -> None:
    # Tansu refuses SCRAM credentials it does not know inside the exchange
    # (RFC 5802 e=unknown-user), where Kafka answers an error code.
    with Tansu(authentication=True) as server:
        broker = KafkaBroker.from_url(server.url(user="alice:wrong"))
        with pytest.raises(AuthenticationError) as caught:
            await broker.connect()
        await broker.close()
    message = str(caught.value)
    assert f"kafka://alice:***@{server.address}" in message
    assert "refused the credentials (SCRAM: e=unknown-user)" in message
    assert "check the user, password" in message and "wrong" not in message


async def test_an_idempotent_producer_refused_by_the_broker_names_the_fix(tansu: Tansu) -> None:
    broker = KafkaBroker.from_url(f"kafka://{tansu.address}")  # Tansu refuses InitProducerId
    try:
        with pytest.raises(Exception, match=r"idempotence=false"):
            await broker.connect()
    finally:
        await broker.close()


# -- retries and dead letters -------------------------------------------------


async def test_a_retry_goes_to_the_failing_group_only_and_waits_paused(
    tansu: Tansu, topic: str
) -> None:
    broker = await opened(url(tansu, partitions=1))
    try:
        billing = await broker.subscribe(topic, "billing", prefetch=10)
        shipping = await broker.subscribe(topic, "shipping", prefetch=10)
        await broker.publish(topic, events(3))
        first, *rest = await fetch_n(billing, 3)
        assert len(rest) == 2
        started = time.monotonic()
        await billing.settle(rest, [(first, 0.8)], [])
        assert len(await fetch_n(shipping, 3)) == 3
        assert await shipping.fetch(10, 0.3) == [], "the other group got the retry too"

        early = await billing.fetch(10, 0.4)
        assert early == [], "redelivered before its delay"
        [retried] = await fetch_n(billing, 1)
        assert time.monotonic() - started >= 0.75
        assert (retried.id, retried.attempt) == (first.id, 2)
        await billing.settle([retried], [], [])
        await until_equal(lambda: total_lag(billing), 0)
    finally:
        await broker.close()


async def test_dead_letters_name_their_source_and_replay_into_their_group(
    tansu: Tansu, topic: str
) -> None:
    broker = await opened(url(tansu, partitions=1))
    try:
        billing = await broker.subscribe(topic, "billing", prefetch=10)
        shipping = await broker.subscribe(topic, "shipping", prefetch=10)
        await broker.publish(topic, events(1))
        [doomed] = await fetch_n(billing, 1)
        await billing.settle([], [], [(doomed, "FatalError: no")])
        [fine] = await fetch_n(shipping, 1)
        await shipping.settle([fine], [], [])

        billing_dlq = await broker.dead_letters(topic, "billing")
        assert await (await broker.dead_letters(topic, "shipping")).count() == 0
        [letter] = await billing_dlq.list()
        assert (letter.group, letter.error, letter.message_id) == (
            "billing",
            "FatalError: no",
            doomed.id,
        )
        assert await billing_dlq.replay() == 1
        [back] = await fetch_n(billing, 1)
        assert (back.id, back.attempt) == (doomed.id, 1)
        assert await shipping.fetch(10, 0.3) == []
        await billing.settle([back], [], [])
        assert await billing_dlq.count() == 0
    finally:
        await broker.close()


async def test_a_revoked_partition_waits_for_its_handlers_and_commits_before_moving(
    tansu: Tansu, topic: str
) -> None:
    slow_rebalance = tansu.url(f"partitions=2&{QUIRKS}&rebalance_timeout=3&drain=2")
    async with two_brokers(slow_rebalance) as (first_broker, second_broker):
        first = await first_broker.subscribe(topic, "billing", prefetch=100)
        keyed = [OutgoingMessage(f'{{"n": {i}}}'.encode(), key=f"k{i}") for i in range(20)]
        await first_broker.publish(topic, keyed)
        held = await fetch_n(first, 20)
        assert len(held) == 20 and {m.partition for m in held} == {0, 1}

        # A second member joins: the first must give a partition up, but only
        # after its handlers finished and their offsets were committed.
        joining = asyncio.ensure_future(second_broker.subscribe(topic, "billing", prefetch=100))
        await asyncio.sleep(0.5)
        assert not joining.done()
        await first.settle(held, [], [])
        second = await asyncio.wait_for(joining, 20)

        assert await first.fetch(100, 0.5) == []
        assert await second.fetch(100, 1.0) == [], "a handled message was delivered again"
        assert await total_lag(second) == 0


async def test_a_late_outcome_from_a_lost_ownership_does_not_settle_the_next_delivery(
    tansu: Tansu, topic: str
) -> None:
    quick_drain = tansu.url(f"partitions=1&{QUIRKS}&drain=0.2")
    async with two_brokers(quick_drain) as (first_broker, second_broker):
        first = await first_broker.subscribe(topic, "reclaimed", prefetch=100)
        await first_broker.publish(topic, [OutgoingMessage(b"{}") for _ in range(5)])
        stale = await fetch_n(first, 5)

        # A second member joins and leaves again. Each rebalance takes the
        # partition from the first (its handlers outlive the drain) and
        # assigns it anew; it ends with the first, handed the same offsets again.
        second = await second_broker.subscribe(topic, "reclaimed", prefetch=100)
        await second.close()
        fresh = await fetch_n(first, 5, within=20)
        assert [m.offset for m in fresh] == [m.offset for m in stale]

        # The old handlers finish now: their outcomes belong to the lost
        # ownership and must not commit past the new, unsettled deliveries.
        await first.settle(stale, [], [])
        assert await total_lag(first) == 5
        await first.settle(fresh, [], [])
        assert await total_lag(first) == 0


async def test_a_member_whose_handlers_outlast_max_poll_interval_stays_in_its_group(
    tansu: Tansu, topic: str
) -> None:
    impatient = tansu.url(f"partitions=1&{QUIRKS}&max_poll_interval=1")
    async with two_brokers(impatient) as (slow_broker, other_broker):
        slow = await slow_broker.subscribe(topic, "patient", prefetch=10)

        async def handlers_hold_the_loop() -> None:
            # What the runtime does while handlers hold a full loop: fetch(0, 0)
            # every 0.25 s. It must count as polling, or aiokafka leaves the
            # group after max_poll_interval and the messages go to the other.
            while True:
                await slow.fetch(0, 0)
                await asyncio.sleep(0.25)

        keepalive = asyncio.ensure_future(handlers_hold_the_loop())
        try:
            other = await other_broker.subscribe(topic, "patient", prefetch=10)
            await slow_broker.publish(topic, events(3))
            held = await fetch_n(slow, 3, within=10)  # the older member keeps the partition
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                assert await other.fetch(10, 0.2) == [], "the slow member was dropped"
            await slow.settle(held, [], [])
            assert await total_lag(slow) == 0
        finally:
            keepalive.cancel()


# -- the running consumer -----------------------------------------------------------


async def test_lag_per_partition_is_in_health_and_metrics(tansu: Tansu, topic: str) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from millstream.observability import health

    ms = Millstream(url(tansu, partitions=3), poll_timeout=0.2)

    @ms.consumer(topic, group="billing")
    async def handle(event: dict[str, int]) -> None:
        pass

    async with ms:
        consumer = ms.consumers["handle"]
        consumer.pause()
        await asyncio.sleep(0.5)  # a fetch under way when pausing has returned
        await ms.publish_batch(topic, [{"n": i} for i in range(30)], key_by="n")
        lag = await consumer.lag()
        assert lag is not None and lag.total == 30
        assert set(lag.partitions) == {0, 1, 2} and sum(lag.partitions.values()) == 30

        [report] = await health.collect([consumer])
        document = health.Health(ms.broker.url, True, False, [report]).document()
        details = document["components"]["consumers"]["components"]["handle"]["details"]
        assert (details["lag"], details["partitionCount"]) == (30, 3)
        assert sum(details["partitions"].values()) == 30

        metrics = ms.metrics
        metrics.remember([report])
        lags = {
            sample.labels["partition"]: sample.value
            for family in text_string_to_metric_families(metrics.render().decode())
            for sample in family.samples
            if sample.name == "millstream_consumer_lag"
        }
        assert lags == {str(p): float(n) for p, n in lag.partitions.items()}

        consumer.resume()
        await until_equal(lambda: consumer_lag(ms), 0)


async def test_a_broker_restart_is_survived_but_memory_storage_forgets(tmp_path: Path) -> None:
    """Tansu here keeps data in memory only: the consumer must come back and go on.

    What was acknowledged before the restart is gone with the broker (there is
    no durable engine in this build), so only recovery is checked.
    """
    with Tansu() as broker_process:
        address = broker_process.url(f"partitions=2&{QUIRKS}")
        ms = Millstream(address, reconnect_backoff=0.05, poll_timeout=0.2)
        handled: list[int] = []

        @ms.consumer("payments", group="billing", concurrency=4)
        async def handle(event: dict[str, int]) -> None:
            handled.append(event["n"])

        async with ms:
            consumer = ms.consumers["handle"]
            await ms.publish_batch("payments", [{"n": i} for i in range(100)])
            await until(lambda: len(set(handled)) >= 100, within=10)
            broker_process.restart(down_for=0.3)
            await until(lambda: consumer.state is ConsumerState.RECONNECTING, within=10)
            await until(lambda: consumer.state is ConsumerState.RUNNING, within=20)
            broker = ms.broker
            assert isinstance(broker, KafkaBroker)
            broker.connection.topics.clear()  # the topics went with the server
            await ms.publish_batch("payments", [{"n": i} for i in range(100, 200)])
            await until(lambda: set(range(100, 200)) <= set(handled), within=20)
