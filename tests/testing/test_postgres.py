"""``TestApp(ms, store_url=...)``: the throw-away store is a PostgreSQL database of the test's."""

from __future__ import annotations

from millstream import Millstream, Transaction
from millstream.testing import TestApp


async def test_the_outbox_and_the_ledger_on_postgres(postgres_url: str) -> None:
    ms = Millstream("memory://")
    ms.store.schema("CREATE TABLE IF NOT EXISTS paid (order_id TEXT PRIMARY KEY)")

    @ms.consumer("payments", group="orders", idempotent=True)
    async def on_payment(payment: dict[str, str], tx: Transaction) -> None:
        await tx.execute("INSERT INTO paid (order_id) VALUES ($1)", payment["order_id"])
        tx.publish("orders.paid", payment, key=payment["order_id"])

    async with TestApp(ms, store_url=postgres_url) as t:
        assert ms.store.dialect == "postgres"
        await t.publish("payments", {"order_id": "o-1"})
        await t.drain()
        assert [each.value for each in t.published("orders.paid")] == [{"order_id": "o-1"}]
        assert await ms.store.fetchval("SELECT count(*) FROM paid") == 1
        assert t.handled(on_payment) == 1
