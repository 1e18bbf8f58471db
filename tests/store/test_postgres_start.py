"""Starting on PostgreSQL: a fleet started at once all starts; a schema change still applies.

Each test gets a database of its own on the shared server (``postgres_url``).
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import pytest

from examples.orders.store import SCHEMA as ORDERS_SCHEMA
from millstream import Millstream
from millstream.store import open_store

INSTANCES = 5
TRIALS = 10


def instance(url: str) -> Millstream:
    """One instance of an order service: its own tables, an idempotent consumer, a relay."""
    ms = Millstream("memory://", store_url=url)
    ms.store.schema(ORDERS_SCHEMA)

    @ms.consumer("payments", idempotent=True)
    async def apply(payment: bytes) -> None:
        return None

    return ms


async def test_a_fleet_started_at_once_all_starts(postgres_url: str) -> None:
    """Five instances start together, ten times, on a database that has its tables.

    Each start runs the schema while the instances already up prune the
    outbox and the ledger: the DDL's share locks and the prune's deletes
    used to take the two tables in opposite orders and deadlock.
    """
    failures: list[str] = []
    started = time.perf_counter()
    for trial in range(TRIALS):
        fleet = [instance(postgres_url) for _ in range(INSTANCES)]
        results = await asyncio.gather(*(ms.start() for ms in fleet), return_exceptions=True)
        failures += [f"trial {trial}: {r!r}" for r in results if isinstance(r, BaseException)]
        await asyncio.gather(*(ms.stop() for ms in fleet if ms.started))
    seconds = time.perf_counter() - started
    print(f"fleet start: {TRIALS} x {INSTANCES} instances, {len(failures)} failed, {seconds:.1f}s")
    assert failures == []


async def test_a_new_script_is_applied_at_the_next_start(postgres_url: str) -> None:
    first = open_store(postgres_url)
    first.schema("CREATE TABLE IF NOT EXISTS a (id TEXT PRIMARY KEY)")
    await first.open()
    await first.close()
    upgraded = open_store(postgres_url)
    upgraded.schema("CREATE TABLE IF NOT EXISTS a (id TEXT PRIMARY KEY)")
    upgraded.schema("CREATE TABLE IF NOT EXISTS b (id TEXT PRIMARY KEY)")
    await upgraded.open()
    try:
        assert await upgraded.execute("INSERT INTO b (id) VALUES ($1)", "x") == 1
    finally:
        await upgraded.close()


async def test_a_schema_change_that_deadlocks_is_retried(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A running transaction writes a table, then the outbox; the schema locks them reversed.

    PostgreSQL aborts one side of the deadlock; if that is the schema
    change, the store starts it over and opens once the other side is done.
    """
    plain = open_store(postgres_url)
    plain.schema("CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY)")
    await plain.open()
    await plain.close()
    writer = await asyncpg.connect(postgres_url)
    store = open_store(postgres_url)
    store.schema("CREATE INDEX IF NOT EXISTS items_id ON items (id)")
    try:
        await writer.execute("SET deadlock_timeout = '10s'")  # the store's side is the victim
        transaction = writer.transaction()
        await transaction.start()
        await writer.execute("INSERT INTO items (id) VALUES ('held')")
        opening = asyncio.create_task(store.open())
        await asyncio.sleep(0.3)  # the schema holds the outbox and waits for items
        with caplog.at_level(logging.WARNING, "millstream.store"):
            await writer.execute(
                "INSERT INTO millstream_outbox (topic, message_id, headers, payload, "
                "created_at, due_at) VALUES ('t', 'm', '{}', 'x', 0, 0)"
            )
            await transaction.commit()
            await asyncio.wait_for(opening, 10)
        assert "creating the schema deadlocked" in caplog.text
        assert await store.fetchval("SELECT count(*) FROM millstream_outbox") == 1
    finally:
        await writer.close()
        await store.close()
