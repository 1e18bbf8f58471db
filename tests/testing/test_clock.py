"""The memory hub on a clock the test moves: delays, backlogs and waking fetches."""

from __future__ import annotations

import asyncio

import pytest

from millstream.brokers.memory.broker import MemoryBroker
from millstream.brokers.memory.hub import Backlog, MemoryHub
from millstream.testing import ManualClock
from tests.support import events, numbers


async def test_a_retry_is_due_when_the_clock_says_so_and_the_backlog_tells_why() -> None:
    clock = ManualClock()
    hub = MemoryHub(clock=clock)
    broker = MemoryBroker(hub)
    await broker.connect()
    await broker.publish("t", events(2))
    assert hub.backlog("t", "g") == Backlog()  # no such group yet: nothing to wait for
    subscription = await broker.subscribe("t", "g", prefetch=10)
    assert hub.backlog("t", "g") == Backlog(unread=2)
    first, second = await subscription.fetch(10, 0)
    assert hub.backlog("t", "g") == Backlog(leased=2)
    await subscription.settle([second], [(first, 30.0)], [])
    assert hub.backlog("t", "g") == Backlog(delayed=1, next_due=30.0)
    assert await subscription.fetch(10, 0) == []
    clock.advance(29.5)
    assert await subscription.fetch(10, 0) == []
    clock.advance_to(30.0)
    assert hub.backlog("t", "g") == Backlog(ready=1)
    [again] = await subscription.fetch(10, 0)
    assert (numbers([again]), again.attempt) == ([0], 2)


async def test_waking_the_hub_ends_a_fetch_waiting_for_a_retry() -> None:
    clock = ManualClock()
    hub = MemoryHub(lease=10_000, clock=clock)  # nothing but the wake ends the wait below
    broker = MemoryBroker(hub)
    await broker.connect()
    await broker.publish("t", events(1))
    subscription = await broker.subscribe("t", "g", prefetch=10)
    [message] = await subscription.fetch(10, 0)
    await subscription.settle([], [(message, 3600.0)], [])
    waiting = asyncio.create_task(subscription.fetch(10, 600.0))
    await asyncio.sleep(0)  # it looked, found nothing due, and waits
    assert not waiting.done()
    clock.advance(3600.0)
    hub.wake()
    async with asyncio.timeout(10):
        [again] = await waiting
    assert again.id == message.id and again.attempt == 2


def test_the_clock_moves_forward_only() -> None:
    clock = ManualClock(5.0)
    clock.advance_to(1.0)
    assert clock() == 5.0
    with pytest.raises(ValueError, match=r"advance\(-1\) would go back"):
        clock.advance(-1)
