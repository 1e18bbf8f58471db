"""Failures the app survives: handler timeouts and cancellations, refused and flapping brokers."""

from __future__ import annotations

import asyncio
import json
import threading

from millstream import AuthenticationError, Message, Millstream, Retry
from millstream.brokers.memory.broker import MemoryBroker, MemoryHub, MemorySubscription
from millstream.errors import BrokerUnavailable
from millstream.runtime import ConsumerState
from tests.app.support import app
from tests.support import until, until_equal


async def test_handler_timeout_counts_as_a_failure_and_retries() -> None:
    ms = app()
    attempts: list[int] = []

    @ms.consumer("t", timeout=0.05, retry=Retry(attempts=3, backoff=0.01, jitter=0))
    async def handle(event: dict[str, int], msg: Message) -> None:
        attempts.append(msg.attempt)
        if msg.attempt == 1:
            await asyncio.sleep(10)

    async with ms:
        await ms.publish("t", {"n": 1})
        await until(lambda: ms.consumers["handle"].stats.acked == 1)

    assert attempts == [1, 2]
    consumer = ms.consumers["handle"]
    assert consumer.state is ConsumerState.STOPPED
    assert (consumer.stats.retried, consumer.stats.acked) == (1, 1)


async def test_a_handler_raising_cancelled_error_is_a_failure_not_a_dead_worker() -> None:
    ms = app()
    handled: list[int] = []

    @ms.consumer("t", concurrency=1, retry=Retry(attempts=2, backoff=0.01, jitter=0))
    async def handle(event: dict[str, int], msg: Message) -> None:
        if event["n"] == 0 and msg.attempt == 1:
            raise asyncio.CancelledError  # e.g. awaiting a task someone else cancelled
        handled.append(event["n"])

    async with ms:
        await ms.publish_batch("t", [{"n": i} for i in range(3)])
        await until(lambda: sorted(handled) == [0, 1, 2])
        assert ms.consumers["handle"].stats.retried == 1


async def test_a_hung_sync_handler_does_not_starve_the_messages_behind_it() -> None:
    ms = app()
    release = threading.Event()
    handled: list[str] = []

    @ms.consumer("t", concurrency=1, timeout=0.2, retry=Retry(attempts=2, backoff=0.01))
    def handle(event: dict[str, str]) -> None:
        if event["v"] == "hang":
            release.wait(10)
        handled.append(event["v"])

    try:
        async with ms:
            await ms.publish_batch("t", [{"v": "hang"}, {"v": "ok-1"}, {"v": "ok-2"}])
            await until(lambda: {"ok-1", "ok-2"} <= set(handled), within=5)
            dlq = await ms.dead_letters("t", "handle")
            await until_equal(dlq.count, 1)
            assert [json.loads(x.payload)["v"] for x in await dlq.list()] == ["hang"]
    finally:
        release.set()


class RefusingBroker(MemoryBroker):
    """A memory broker whose server refuses this client, for the supervisor's sake."""

    def __init__(self, error: Exception, failures: int) -> None:
        super().__init__(MemoryHub())
        self.error = error
        self.failures = failures
        self.subscribe_calls = 0

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> MemorySubscription:
        self.subscribe_calls += 1
        if self.subscribe_calls <= self.failures:
            raise self.error
        return await super().subscribe(topic, group, prefetch=prefetch, member=member)


async def test_authentication_failure_stops_the_consumer_without_retrying() -> None:
    broker = RefusingBroker(AuthenticationError("bad password for user 'orders'"), failures=99)
    ms = Millstream(broker=broker, reconnect_backoff=0.01)

    @ms.consumer("t")
    async def handle(event: dict[str, int]) -> None: ...

    async with ms:
        consumer = ms.consumers["handle"]
        await asyncio.sleep(0.3)
        assert consumer.state is ConsumerState.FAILED
        assert consumer.stats.last_error == "bad password for user 'orders'"
        assert broker.subscribe_calls == 1


async def test_unreachable_broker_is_retried_with_backoff_until_it_answers() -> None:
    broker = RefusingBroker(BrokerUnavailable("connection refused"), failures=3)
    ms = Millstream(broker=broker, reconnect_backoff=0.02, reconnect_max_backoff=0.05)
    handled: list[int] = []

    @ms.consumer("t")
    async def handle(event: dict[str, int]) -> None:
        handled.append(event["n"])

    async with ms:
        consumer = ms.consumers["handle"]
        assert consumer.state is ConsumerState.RECONNECTING
        await until(lambda: consumer.state is ConsumerState.RUNNING)
        await ms.publish("t", {"n": 7})
        await until(lambda: handled == [7])
        assert broker.subscribe_calls == 4
        assert consumer.stats.reconnects == 3


async def test_a_flapping_connection_neither_uses_up_retries_nor_runs_handlers_twice() -> None:
    # Each cut gives back, counted, what the consumer held; most of it never reached a
    # handler, and some was handled but its ack lost. Neither is a failed attempt.
    hub = MemoryHub()
    broker = MemoryBroker(hub)
    ms = Millstream(broker=broker, reconnect_backoff=0.005, poll_timeout=0.05, prefetch=8)
    handled: list[int] = []

    @ms.consumer("t", retry=Retry(attempts=2, backoff=0.01))
    async def handle(event: dict[str, int]) -> None:
        await asyncio.sleep(0.002)
        handled.append(event["n"])

    await ms.publish_batch("t", [{"n": i} for i in range(400)])
    async with ms:
        consumer = ms.consumers["handle"]
        for _ in range(12):
            await until(lambda: consumer.state is ConsumerState.RUNNING and consumer.inflight > 8)
            broker.cut()
            await asyncio.sleep(0.03)
        await until(lambda: len(set(handled)) == 400, within=20)
        dlq = await ms.dead_letters("t", "handle")
        letters = await dlq.list()

    assert letters == []
    assert consumer.stats.reconnects >= 12
    assert consumer.stats.dead == 0
    # Handled before a cut swallowed the ack: acked when it comes back, not run again.
    assert len(handled) == 400
