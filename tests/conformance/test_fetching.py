"""How a member fetches while its handlers run: keepalive fetches, and leases outlasted."""

from __future__ import annotations

import time

from tests.conformance.factory import GROUP, LEASE, BrokerFactory
from tests.support import drain, events, fetch_n, numbers, total_lag


async def test_keepalive_fetch_takes_nothing_and_does_not_wait(
    brokers: BrokerFactory, topic: str
) -> None:
    """``fetch(0, 0)`` returns at once with nothing; what was published stays for a fetch."""
    broker = await brokers.connect()
    sub = await broker.subscribe(topic, GROUP, prefetch=10)
    await broker.publish(topic, events(5))
    started = time.monotonic()
    assert await sub.fetch(0, 0) == []
    assert time.monotonic() - started < 0.5
    assert await total_lag(sub) == 5
    assert numbers(await drain(sub)) == [0, 1, 2, 3, 4]


async def test_a_fetch_of_nothing_does_not_wait_its_timeout(
    brokers: BrokerFactory, topic: str
) -> None:
    """``fetch(0, timeout)`` has nothing to wait for: it returns at once, taking nothing."""
    broker = await brokers.connect()
    sub = await broker.subscribe(topic, GROUP, prefetch=10)
    await broker.publish(topic, events(5))
    started = time.monotonic()
    assert await sub.fetch(0, 5.0) == []
    assert time.monotonic() - started < 0.5
    assert await total_lag(sub) == 5


async def test_a_slow_member_keeps_its_messages_past_the_lease(
    brokers: BrokerFactory, topic: str
) -> None:
    """A member that keeps calling ``fetch(0, 0)`` holds its messages past several leases."""
    slow_broker, other_broker = await brokers.connect(), await brokers.connect()
    slow = await slow_broker.subscribe(topic, GROUP, prefetch=10)
    other = await other_broker.subscribe(topic, GROUP, prefetch=10)
    await slow_broker.publish(topic, events(3))
    held = await fetch_n(slow, 3)
    assert len(held) == 3

    # The slow member only keeps calling fetch(0, 0), as the runtime does
    # while its handlers run; the other must not take its messages.
    deadline = time.monotonic() + 3 * LEASE + 0.5
    while time.monotonic() < deadline:
        await slow.fetch(0, 0)
        assert await other.fetch(10, 0.1) == []
    await slow.settle(held, [], [])
    assert await other.fetch(10, LEASE + 0.3) == []
