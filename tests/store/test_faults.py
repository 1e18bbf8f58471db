"""PostgreSQL killed (SIGKILL, postmaster and backends) and restarted under live traffic.

A: an idempotent consumer writing one row per message: every message has
its effect exactly once, and the consumer carries on by itself.
B: the outbox relay publishing: every row committed to the outbox is
published at least once; duplicates are counted.

Each runs a private server (tests/store/postgres_server.py) and prints one
line of figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import asyncpg
import pytest

from millstream import Millstream, RetryPolicy, Transaction
from millstream.brokers.memory.broker import MemoryBroker, MemoryHub
from millstream.message import OutgoingMessage
from millstream.store import open_store
from millstream.store.outbox import OutboxRelay
from tests.conftest import report
from tests.store.postgres_server import PostgresServer
from tests.support import until, until_equal

pytestmark = pytest.mark.slow

DOWN_FOR = 1.0  # seconds the server stays dead


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.remove()


async def count(url: str, sql: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def crash_and_restart(server: PostgresServer) -> float:
    """Kill -9 the server, keep it down ``DOWN_FOR`` seconds, start it; when it was back."""
    await asyncio.to_thread(server.stop, kill=True)
    await asyncio.sleep(DOWN_FOR)
    await asyncio.to_thread(server.start)
    return time.monotonic()


async def test_an_idempotent_consumer_applies_every_message_once_across_a_crash(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    total = 600
    ms = Millstream("memory://", store_url=postgres.url, settle_interval=0.001)
    ms.store.schema("CREATE TABLE IF NOT EXISTS effects (n INTEGER NOT NULL)")  # no key: counts
    handled: list[float] = []

    @ms.consumer(
        "numbers",
        group="adders",
        idempotent=True,
        concurrency=4,
        retry=RetryPolicy(attempts=30, backoff=0.1, max_backoff=1.0),
    )
    async def add(n: int, tx: Transaction) -> None:
        await tx.execute("INSERT INTO effects (n) VALUES ($1)", n)
        tx.after_commit(lambda: handled.append(time.monotonic()))

    async def produce() -> None:
        for n in range(total):
            await ms.publish("numbers", n)
            await asyncio.sleep(0.004)

    async with ms:
        producing = asyncio.create_task(produce())
        await until(lambda: len(handled) >= total // 4, within=20)
        back = await crash_and_restart(postgres)
        await until(lambda: bool(handled) and handled[-1] > back, within=20)
        recovery = handled[-1] - back  # when the first commit after the restart was seen
        await producing
        distinct = "SELECT count(DISTINCT n) FROM effects"
        await until_equal(lambda: count(postgres.url, distinct), total, within=30)
        distinct_effects = await count(postgres.url, distinct)
        await asyncio.sleep(0.3)  # a duplicate effect would show by now
        rows = await count(postgres.url, "SELECT count(*) FROM effects")
    report(
        "PostgreSQL kill -9 under an idempotent consumer",
        published=total,
        effects=rows,
        lost=total - distinct_effects,
        duplicates=rows - distinct_effects,
        recovery_s=recovery,
    )
    assert rows == total
    # The retries say which store failed, not only "connection refused".
    assert f"store {postgres.url}: lost the database" in caplog.text


class Deliveries:
    """A consumer on the broker the relay publishes to: every message id it receives."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()

    async def run(self, broker: MemoryBroker, topic: str) -> None:
        subscription = await broker.subscribe(topic, "readers", prefetch=200)
        while True:
            batch = await subscription.fetch(200, 0.1)
            self.ids.update(m.id for m in batch)
            await subscription.settle(batch, [], [])


async def test_the_relay_publishes_every_outbox_row_across_a_crash(
    postgres: PostgresServer,
) -> None:
    """The server dies while a batch is on its way to the broker, writes going on meanwhile.

    That batch reached the broker but could not be marked sent: it is
    marked once the store is back, not published again when its claim runs out.
    """
    store = open_store(postgres.url)
    await store.open()
    broker = MemoryBroker(MemoryHub())
    await broker.connect()
    deliveries = Deliveries()
    reading = asyncio.create_task(deliveries.run(broker, "events"))
    restarted: list[asyncio.Task[float]] = []

    async def publish(topic: str, messages: Sequence[OutgoingMessage]) -> None:
        await asyncio.sleep(0.01)  # a broker round trip
        if sum(deliveries.ids.values()) >= 300 and not restarted:
            await asyncio.to_thread(postgres.stop, kill=True)  # with this batch in flight
            restarted.append(asyncio.create_task(restart_later()))
        await broker.publish(topic, messages)

    async def restart_later() -> float:
        await asyncio.sleep(DOWN_FOR)
        await asyncio.to_thread(postgres.start)
        return time.monotonic()

    async def write(rows: int) -> None:
        async with store.transaction() as tx:
            for _ in range(rows):
                tx.publish("events", {"at": time.time()})

    async def keep_writing() -> None:
        while True:
            with contextlib.suppress(Exception):  # down: the write may or may not commit
                await write(5)
            await asyncio.sleep(0.01)

    for _ in range(20):
        await write(50)
    relay = OutboxRelay(
        store, publish, broker.connect, batch=25, poll_interval=0.05, lease=3.0, max_backoff=1.0
    )
    relay.start()
    writing = asyncio.create_task(keep_writing())
    try:
        await until(lambda: bool(restarted) and restarted[0].done(), within=20)
        back = restarted[0].result()
        published_before = relay.stats.published
        await until(lambda: relay.stats.published > published_before, within=20)
        recovery = time.monotonic() - back
        await asyncio.sleep(0.5)  # writes go on for a while after the restart
        writing.cancel()
        unsent = "SELECT count(*) FROM millstream_outbox WHERE sent_at IS NULL"
        await until_equal(lambda: count(postgres.url, unsent), 0, within=30)
        rows = await store.fetch("SELECT message_id FROM millstream_outbox")
        ids = {row["message_id"] for row in rows}
        await until(lambda: ids <= deliveries.ids.keys(), within=10)
        await asyncio.sleep(3.5)  # past the claim of the batch that was in flight
    finally:
        writing.cancel()
        await relay.stop()
        reading.cancel()
        await store.close()
        await broker.close()
    lost = len(ids - deliveries.ids.keys())
    duplicates = sum(deliveries.ids.values()) - len(deliveries.ids)
    report(
        "PostgreSQL kill -9 under the outbox relay",
        published=len(ids),
        delivered=len(deliveries.ids),
        lost=lost,
        duplicates=duplicates,
        recovery_s=recovery,
    )
    assert (lost, duplicates) == (0, 0)
