"""The store on SQLite and on PostgreSQL: one transaction API, the outbox and the ledger."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from millstream import Millstream
from millstream.errors import ConfigError, StoreError
from millstream.store import Store, Transaction, current_transaction, open_store
from tests.support import until


async def test_a_transaction_commits_on_success_and_rolls_back_on_error(opened: Store) -> None:
    async with opened.transaction() as tx:
        assert await tx.execute("INSERT INTO items (id, n) VALUES ($1, $2)", "a", 1) == 1
        await tx.executemany("INSERT INTO items (id, n) VALUES ($1, $2)", [("b", 2), ("c", 3)])
        assert current_transaction() is tx
    with pytest.raises(RuntimeError, match="boom"):
        async with opened.transaction() as tx:
            await tx.execute("UPDATE items SET n = $1 WHERE id = $2", 100, "a")
            assert await tx.fetchval("SELECT n FROM items WHERE id = $1", "a") == 100
            raise RuntimeError("boom")
    rows = await opened.fetch("SELECT id, n, note FROM items ORDER BY id")
    assert rows == [
        {"id": "a", "n": 1, "note": None},
        {"id": "b", "n": 2, "note": None},
        {"id": "c", "n": 3, "note": None},
    ]
    # $N parameters may repeat and come in any order, on both databases.
    assert await opened.fetchval("SELECT n FROM items WHERE id = $2 AND n < $1", 10, "b") == 2
    assert await opened.fetchrow("SELECT * FROM items WHERE id = $1", "zz") is None


async def test_publish_and_after_commit_happen_only_when_the_transaction_commits(
    opened: Store,
) -> None:
    called: list[str] = []
    with pytest.raises(RuntimeError):
        async with opened.transaction() as tx:
            tx.publish("orders.created", {"id": "x"})
            tx.after_commit(lambda: called.append("rolled back"))
            raise RuntimeError
    assert await opened.outbox_pending() == 0
    async with opened.transaction() as tx:
        first = tx.publish("orders.created", {"id": "y"}, key="y", headers={"h": "1"})
        tx.publish("orders.created", b"raw")

        async def later() -> None:
            called.append("committed")

        tx.after_commit(later)
    assert called == ["committed"]
    claimed = await opened.claim_outbox(10, time.time(), lease=30)
    assert [(row.topic, row.key, row.payload) for _, row in claimed] == [
        ("orders.created", "y", b'{"id":"y"}'),
        ("orders.created", None, b"raw"),
    ]
    assert claimed[0][1].message_id == first and claimed[0][1].headers == {"h": "1"}
    # Claimed rows are held from another relay until the lease runs out.
    assert await opened.claim_outbox(10, time.time(), lease=30) == []
    assert len(await opened.claim_outbox(10, time.time() + 31, lease=30)) == 2


async def test_a_delayed_publish_is_relayed_at_once_carrying_its_time(opened: Store) -> None:
    """The relay sends it right after the commit; the broker holds it back."""
    before = time.time()
    async with opened.transaction() as tx:
        tx.publish("reminders", {"id": "z"}, delay=60)
    [(_, row)] = await opened.claim_outbox(10, time.time(), lease=30)
    assert row.deliver_at is not None
    assert before + 60 <= row.deliver_at <= time.time() + 60


async def test_an_outbox_from_before_delayed_publishes_gets_the_column(opened: Store) -> None:
    """A store a previous millstream created (no ``deliver_at``) is upgraded when it opens."""
    await opened.execute("ALTER TABLE millstream_outbox DROP COLUMN deliver_at")
    if opened.dialect == "postgres":
        await opened.execute("DELETE FROM millstream_schema")  # as an older schema's digest
    await opened.close()
    again = open_store(opened.url)
    await again.open()
    try:
        async with again.transaction() as tx:
            tx.publish("reminders", b"r", delay=5)
        [(_, row)] = await again.claim_outbox(10, time.time(), lease=30)
        assert row.deliver_at is not None and row.deliver_at > time.time()
    finally:
        await again.close()


async def test_the_ledger_records_an_id_once_per_group(opened: Store) -> None:
    async with opened.transaction() as tx:
        assert await tx.claim_message("billing", "t", "m1", time.time())
        assert not await tx.claim_message("billing", "t", "m1", time.time())
        assert await tx.claim_message("shipping", "t", "m1", time.time())
    with pytest.raises(RuntimeError):
        async with opened.transaction() as tx:
            assert await tx.claim_message("billing", "t", "m2", time.time())
            raise RuntimeError  # rolled back: m2 was not processed
    async with opened.transaction() as tx:
        assert await tx.claim_message("billing", "t", "m2", time.time())


def test_a_bad_store_url_names_the_setting_and_the_fix(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=r"store_url.*sqlite:///"):
        open_store("mysql://localhost/db")
    with pytest.raises(ConfigError, match="in-memory"):
        open_store("sqlite:///:memory:")
    with pytest.raises(ConfigError, match="pool_size"):
        open_store("postgresql://localhost/db?pool_size=zero")


async def test_idempotent_handler_applies_a_redelivered_message_once(store_url: str) -> None:
    ms = Millstream("memory://", store_url=store_url, settle_interval=0.001)
    ms.store.schema("CREATE TABLE IF NOT EXISTS effects (message_id TEXT, n INTEGER)")
    seen: list[int] = []

    @ms.consumer("numbers", group="adders", idempotent=True)
    async def add(n: int, tx: Transaction) -> None:
        seen.append(n)
        await tx.execute("INSERT INTO effects (message_id, n) VALUES ($1, $2)", str(n), n)

    async with ms:
        await ms.publish("numbers", 1)
        await until(lambda: len(seen) == 1)
        # The same message again (same id): a redelivery after a crash before the ack.
        from millstream.message import OutgoingMessage

        async with ms.store.transaction() as tx:
            message_id = await tx.fetchval("SELECT message_id FROM millstream_processed")
        await ms.publish_batch("numbers", [OutgoingMessage(b"1", id=message_id)])
        await ms.publish("numbers", 2)
        await until(lambda: sorted(seen) == [1, 2])
        await asyncio.sleep(0.1)
        assert await ms.store.fetchval("SELECT COUNT(*) FROM effects") == 2
    assert seen == [1, 2]  # the duplicate never reached the handler


async def test_a_failing_handler_rolls_back_its_writes_and_its_ledger_entry(
    store_url: str,
) -> None:
    from millstream import Retry

    ms = Millstream("memory://", store_url=store_url, settle_interval=0.001)
    ms.store.schema("CREATE TABLE IF NOT EXISTS effects (message_id TEXT, n INTEGER)")
    attempts: list[int] = []

    @ms.consumer("numbers", idempotent=True, retry=Retry(attempts=3, backoff=0.01))
    async def flaky(n: int, tx: Transaction) -> None:
        attempts.append(n)
        await tx.execute("INSERT INTO effects (message_id, n) VALUES ($1, $2)", "x", n)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")

    async with ms:
        await ms.publish("numbers", 7)
        await until(lambda: len(attempts) == 2)
        await asyncio.sleep(0.05)
        assert await ms.store.fetchval("SELECT COUNT(*) FROM effects") == 1
        assert await ms.store.fetchval("SELECT COUNT(*) FROM millstream_processed") == 1


async def test_transactions_do_not_nest_and_store_calls_inside_one_go_through_it(
    opened: Store,
) -> None:
    async with opened.transaction() as tx:
        await tx.execute("INSERT INTO items (id, n) VALUES ($1, $2)", "inner", 1)
        # A plain store read or write inside the transaction uses it (and sees its writes)
        # instead of waiting for the write lock or another connection.
        assert await opened.fetchval("SELECT n FROM items WHERE id = $1", "inner") == 1
        assert await opened.execute("UPDATE items SET n = 2 WHERE id = $1", "inner") == 1
        with pytest.raises(StoreError, match="do not nest"):
            async with opened.transaction():
                pass
    assert await opened.fetchval("SELECT n FROM items WHERE id = $1", "inner") == 2


async def test_a_transaction_refuses_use_after_its_block(opened: Store) -> None:
    async with opened.transaction() as tx:
        pass
    with pytest.raises(StoreError, match="has ended"):
        await tx.execute("INSERT INTO items (id, n) VALUES ($1, $2)", "late", 1)
    with pytest.raises(StoreError, match="has ended"):
        tx.publish("t", {"late": True})
    assert await opened.outbox_pending() == 0


async def test_a_cancelled_commit_still_commits_and_runs_its_callbacks(
    opened: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timeout during COMMIT must not tell the caller "failed" about committed data."""
    async with opened.transaction() as probe:
        backend = type(probe)
    real_commit = backend._commit

    async def slow_commit(self: Transaction) -> None:
        await asyncio.sleep(0.3)
        await real_commit(self)

    monkeypatch.setattr(backend, "_commit", slow_commit)
    ran: list[str] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            async with opened.transaction() as tx:
                await tx.execute("INSERT INTO items (id, n) VALUES ($1, $2)", "slow", 1)
                tx.after_commit(lambda: ran.append("after"))
    assert ran == ["after"]
    assert await opened.fetchval("SELECT n FROM items WHERE id = $1", "slow") == 1


async def test_a_begin_cancelled_while_another_process_holds_the_lock_leaves_no_transaction(
    tmp_path: Path,
) -> None:
    import sqlite3

    store = open_store(f"sqlite:///{tmp_path}/state.db")
    store.schema("CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    await store.open()
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process writing, for half a second
        threading.Timer(0.5, lambda: other.execute("COMMIT")).start()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                async with store.transaction() as waiting:
                    await waiting.execute("INSERT INTO items (id, n) VALUES ($1, $2)", "x", 1)
        await asyncio.sleep(0.6)  # the abandoned BEGIN has its lock by now
        async with store.transaction() as tx:  # not stuck inside it
            await tx.execute("INSERT INTO items (id, n) VALUES ($1, $2)", "after", 1)
        assert await store.fetchval("SELECT COUNT(*) FROM items") == 1
    finally:
        other.close()
        await store.close()


async def test_health_reports_a_store_that_does_not_answer_as_down() -> None:
    from millstream.observability.health import check_store
    from tests.brokers.server_process import free_port

    nowhere = open_store(f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    report = await check_store(nowhere, "the-url")
    assert (report.url, report.status, report.outbox_pending) == ("the-url", "DOWN", None)
    assert report.error is not None and "cannot connect" in report.error
