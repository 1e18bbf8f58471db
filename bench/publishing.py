"""What ``publishes=`` costs per message, on the memory broker: ``python -m bench.publishing``.

Three consumers of the same waiting events, each timed from start to the
last ack: one that publishes nothing, one that returns the event with
``publishes=``, and one that calls ``await ms.publish(...)`` itself with the
incoming key. Each runs ``ROUNDS`` times in turn; the best round counts.
The difference to the first is what publishing costs per message.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

from bench.events import OrderEvent
from bench.scenarios import publish_all, settled
from millstream import Message, Millstream

ROUNDS = 5


def nothing(ms: Millstream, done: Callable[[], None]) -> None:
    @ms.consumer("orders", group="bench", concurrency=8)
    async def handle(event: OrderEvent) -> None:
        done()


def returned(ms: Millstream, done: Callable[[], None]) -> None:
    @ms.consumer("orders", group="bench", concurrency=8, publishes="out")
    async def handle(event: OrderEvent) -> OrderEvent:
        done()
        return event


def awaited(ms: Millstream, done: Callable[[], None]) -> None:
    @ms.consumer("orders", group="bench", concurrency=8)
    async def handle(event: OrderEvent, message: Message) -> None:
        await ms.publish("out", event, key=message.key)
        done()


async def seconds(declare: Callable[[Millstream, Callable[[], None]], None], n: int) -> float:
    """Seconds from start until ``n`` waiting events are handled and acked."""
    ms = Millstream("memory://")
    finished = asyncio.Event()
    count = 0

    def done() -> None:
        nonlocal count
        count += 1
        if count >= n:
            finished.set()

    declare(ms, done)
    await ms.broker.connect()
    await publish_all(ms, "orders", n)
    started = time.perf_counter()
    async with ms:
        await finished.wait()
        await settled(ms.consumers["handle"])
        return time.perf_counter() - started


async def main(n: int) -> None:
    variants = {"publishes nothing": nothing, "publishes=": returned, "await ms.publish": awaited}
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(ROUNDS):
        for name, declare in variants.items():
            best[name] = min(best[name], await seconds(declare, n))
    base = best["publishes nothing"] / n * 1e6
    for name, elapsed in best.items():
        per = elapsed / n * 1e6
        print(f"{name:18} {n / elapsed:>9,.0f} msgs/s {per:6.2f} us/msg {per - base:+6.2f} us")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))
