"""Handlers of every shape the app runs: sync functions, plain decorators, keyed batches."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence

from millstream import Message
from tests.app.support import app
from tests.support import until


async def test_publish_batch_keys_by_field_and_sync_handlers_work() -> None:
    ms = app()
    seen: list[tuple[str | None, object]] = []

    @ms.consumer("t", concurrency=4)
    def handle(event: dict[str, object], msg: Message) -> None:
        seen.append((msg.key, event["n"]))

    async with ms:
        ids: Sequence[str] = await ms.publish_batch(
            "t", [{"order_id": f"o-{i}", "n": i} for i in range(5)], key_by="order_id"
        )
        await until(lambda: len(seen) == 5)

    assert len(set(ids)) == 5
    assert sorted(seen) == [(f"o-{i}", i) for i in range(5)]


def logged(handler: Callable[..., object]) -> Callable[..., object]:
    """A plain decorator, as tracing and retry libraries write them."""

    @functools.wraps(handler)
    def wrapper(*args: object) -> object:
        return handler(*args)

    return wrapper


async def test_an_async_handler_under_a_plain_decorator_is_awaited() -> None:
    ms = app()
    handled: list[int] = []

    @ms.consumer("t")
    @logged
    async def handle(event: dict[str, int]) -> None:
        await asyncio.sleep(0)
        handled.append(event["n"])

    async with ms:
        await ms.publish("t", {"n": 1})
        await until(lambda: handled == [1])
