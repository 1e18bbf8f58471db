"""Waiting helpers shared by the tests: poll a condition, fail with a clear message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


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
