"""Helpers shared by the tests: poll a condition (failing with a clear message), and
publish and read numbered messages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from millstream.message import OutgoingMessage

if TYPE_CHECKING:
    from millstream import Millstream
    from millstream.brokers.base import Subscription
    from millstream.message import Message


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Return once ``condition()`` holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.005)


async def until_equal(
    read: Callable[[], Awaitable[object]], expected: object, within: float = 10.0
) -> None:
    """Return once ``await read()`` equals ``expected``; fail with the last value seen."""
    deadline = time.monotonic() + within
    while (value := await read()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {expected!r}, still {value!r} after {within}s")
        await asyncio.sleep(0.02)


# -- messages as the broker tests publish and read them -------------------------------


def events(count: int, start: int = 0) -> list[OutgoingMessage]:
    """``count`` messages whose payloads are ``{"n": start}``, ``{"n": start + 1}``, ..."""
    return [OutgoingMessage(f'{{"n": {i}}}'.encode()) for i in range(start, start + count)]


def numbers(messages: list[Message]) -> list[int]:
    """The ``n`` of each message made by :func:`events`, in the order given."""
    return [json.loads(m.payload)["n"] for m in messages]


async def total_lag(subscription: Subscription) -> int | None:
    lag = await subscription.lag()
    return None if lag is None else lag.total


async def consumer_lag(ms: Millstream, consumer: str = "handle") -> int | None:
    """The total lag of the app's consumer ``consumer``."""
    lag = await ms.consumers[consumer].lag()
    return None if lag is None else lag.total


async def drain(subscription: Subscription, *, timeout: float = 0.3) -> list[Message]:
    """Fetch and ack until a fetch comes back empty."""
    taken: list[Message] = []
    while batch := await subscription.fetch(100, timeout):
        await subscription.settle(batch, [], [])
        taken += batch
    return taken


async def fetch_n(
    subscription: Subscription, count: int, within: float = 5.0, wait: float = 0.5
) -> list[Message]:
    """Fetch until ``count`` messages came, or ``within`` seconds passed (a fetch returns
    what is there once one message is, so it may take several)."""
    taken: list[Message] = []
    deadline = time.monotonic() + within
    while len(taken) < count and time.monotonic() < deadline:
        taken += await subscription.fetch(count - len(taken), wait)
    return taken


def at_least(handled: list[int], count: int) -> Callable[[], bool]:
    """Whether ``count`` distinct numbers were handled."""
    return lambda: len(set(handled)) >= count
