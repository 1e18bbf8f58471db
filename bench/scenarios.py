"""One benchmark scenario per process, so each row's peak memory is its own.

``python -m bench.scenarios NAME N DIR`` prints one JSON object: the row.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.events import OrderEvent, order_events
from millstream import ConsumerRuntime, Millstream, Transaction

Row = dict[str, Any]
PUBLISH_CHUNK = 5000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def publish_all(ms: Millstream, topic: str, n: int) -> float:
    """Publish ``n`` events in chunks; returns msgs/s."""
    started = time.perf_counter()
    for start in range(0, n, PUBLISH_CHUNK):
        await ms.publish_batch(topic, order_events(start, min(PUBLISH_CHUNK, n - start)))
    return n / (time.perf_counter() - started)


async def timed_consume(
    ms: Millstream, topic: str, n: int, *, key: str | None = None, concurrency: int = 8
) -> tuple[float, float]:
    """Seconds for a pydantic handler to handle ``n`` waiting events, and to have them acked."""
    done = asyncio.Event()
    count = 0
    totals: dict[str, int] = {}

    @ms.consumer(topic, group="bench", concurrency=concurrency, key=key)
    async def handle(event: OrderEvent) -> None:
        nonlocal count
        totals[event.status] = totals.get(event.status, 0) + event.amount
        count += 1
        if count >= n:
            done.set()

    started = time.perf_counter()
    async with ms:
        await done.wait()
        handled = time.perf_counter() - started
        await settled(ms.consumers["handle"])  # the acks are part of the job
        acked = time.perf_counter() - started
    return handled, acked


async def consume_all(url: str, n: int, *, key: str | None, concurrency: int) -> Row:
    """Publish ``n`` events, then time a pydantic handler consuming them at-least-once."""
    ms = Millstream(url)
    await ms.broker.connect()
    publish_rate = await publish_all(ms, "orders", n)
    handled, acked = await timed_consume(ms, "orders", n, key=key, concurrency=concurrency)
    return {
        "publish_msgs_s": publish_rate,
        "consume_msgs_s": n / acked,
        "handled_msgs_s": n / handled,
        "peak_rss_mb": peak_rss_mb(),
    }


async def idempotent(store_url: str, n: int) -> Row:
    """An idempotent handler writing one row per message: a store transaction each."""
    ms = Millstream("memory://", store_url=store_url)
    ms.store.schema("CREATE TABLE IF NOT EXISTS effects (order_id TEXT, amount INTEGER)")
    done = asyncio.Event()
    count = 0

    @ms.consumer("orders", group="bench", concurrency=8, idempotent=True)
    async def handle(event: OrderEvent, tx: Transaction) -> None:
        nonlocal count
        await tx.execute(
            "INSERT INTO effects (order_id, amount) VALUES ($1, $2)", event.order_id, event.amount
        )
        count += 1
        if count >= n:
            done.set()

    await ms.broker.connect()
    await publish_all(ms, "orders", n)
    started = time.perf_counter()
    async with ms:
        await done.wait()
        await settled(ms.consumers["handle"])
        elapsed = time.perf_counter() - started
    return {"publish_msgs_s": 0.0, "consume_msgs_s": n / elapsed, "peak_rss_mb": peak_rss_mb()}


async def backlog(url: str, n: int) -> Row:
    """With ``n`` messages waiting, memory while consuming must stay flat."""
    ms = Millstream(url)
    count = 0
    samples: list[float] = []
    checkpoints = {n // 10 * k for k in range(1, 10)}
    finished = asyncio.Event()

    @ms.consumer("orders", group="bench", concurrency=8)
    async def handle(event: OrderEvent) -> None:
        nonlocal count
        count += 1
        if count in checkpoints:
            samples.append(current_rss_mb())
        if count >= n:
            finished.set()

    await ms.broker.connect()
    publish_rate = await publish_all(ms, "orders", n)
    started = time.perf_counter()
    async with ms:
        await finished.wait()
    elapsed = time.perf_counter() - started
    return {
        "publish_msgs_s": publish_rate,
        "consume_msgs_s": count / elapsed,
        "rss_at_10pct_mb": samples[0],
        "rss_at_90pct_mb": samples[-1],
        "peak_rss_mb": peak_rss_mb(),
    }


def answers(
    url: str, ping: Callable[[], Awaitable[None]], *, why: Callable[[Exception], str] = str
) -> str | None:
    """``None`` when ``ping()`` succeeds, else ``"<url>: <why it failed>"``.

    What a row module's ``reachable`` returns, with ``ping`` its client's check.
    """
    try:
        asyncio.run(ping())
    except Exception as exc:
        return f"{url}: {why(exc)}"
    return None


async def settled(consumer: ConsumerRuntime) -> None:
    """Wait until every outcome has been settled with the broker."""
    while consumer.inflight:  # noqa: ASYNC110 - polling a counter, no event to wait on
        await asyncio.sleep(0.001)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 1024 / 1024


def scenarios(workdir: Path, name: str) -> dict[str, Callable[[int], Awaitable[Row]]]:
    sqlite = f"sqlite:///{workdir}/bench.db"
    rows: dict[str, Callable[[int], Awaitable[Row]]] = {
        "memory": lambda n: consume_all("memory://", n, key=None, concurrency=8),
        "memory-keyed": lambda n: consume_all("memory://", n, key="order_id", concurrency=8),
        "sqlite": lambda n: consume_all(sqlite, n, key=None, concurrency=8),
        "sqlite-backlog": lambda n: backlog(sqlite, n),
        "store-sqlite-full": lambda n: idempotent(f"sqlite:///{workdir}/state.db", n),
        "store-sqlite-normal": lambda n: idempotent(
            f"sqlite:///{workdir}/state.db?synchronous=NORMAL", n
        ),
        "store-postgres": lambda n: idempotent(sys.argv[4], n),
    }
    broker = name.removesuffix("-raw")
    if broker in BROKER_ROWS:
        # Only here: the other rows must run without that broker's client installed.
        rows.update(importlib.import_module(f"bench.{broker}_rows").SCENARIOS)
    return rows


BROKER_ROWS = ("redis", "rabbitmq", "nats", "kafka")
"""Brokers with a ``bench/<name>_rows.py``: rows ``<name>-raw`` and ``<name>``, same run."""


def main() -> None:
    name, n, workdir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    row = asyncio.run(scenarios(workdir, name)[name](n))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
