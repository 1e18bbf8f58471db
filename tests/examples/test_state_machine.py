"""Every event against every order state: the legal moves apply and publish, the rest are
fatal and change nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from examples.orders import store as orders
from examples.orders.models import (
    EVENT_TARGET,
    IllegalTransition,
    NewOrder,
    OrderLine,
    PaymentEvent,
    Status,
)
from millstream.store import Store, open_store

LEGAL = {
    (Status.CREATED, "paid"),
    (Status.CREATED, "cancelled"),
    (Status.PAID, "shipped"),
    (Status.PAID, "refunded"),
}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path}/state.db")
    opened.schema(orders.SCHEMA)
    await opened.open()
    yield opened
    await opened.close()


async def order_in(store: Store, status: Status) -> str:
    new = NewOrder(
        customer_id="c-1",
        currency="EUR",
        items=[OrderLine(sku="mug", quantity=2, unit_price=Decimal("9.50"))],
    )
    async with store.transaction() as tx:
        order = await orders.create_order(tx, new)
        await tx.execute("UPDATE orders SET status = $1 WHERE id = $2", status.value, order.id)
    return order.id


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("kind", list(EVENT_TARGET))
async def test_each_event_in_each_state(store: Store, status: Status, kind: str) -> None:
    order_id = await order_in(store, status)
    amount = Decimal("19.00") if kind == "paid" else None
    event = PaymentEvent(order_id=order_id, kind=kind, amount=amount)  # type: ignore[arg-type]
    if (status, kind) in LEGAL:
        async with store.transaction() as tx:
            change = await orders.apply_payment(tx, event)
        assert (change.order_id, change.old, change.new) == (order_id, status, EVENT_TARGET[kind])
        expected = EVENT_TARGET[kind]
    else:
        with pytest.raises(IllegalTransition, match=f"from {status} to {EVENT_TARGET[kind]}"):
            async with store.transaction() as tx:
                await orders.apply_payment(tx, event)
        expected = status
    assert await store.fetchval("SELECT status FROM orders WHERE id = $1", order_id) == expected


async def test_a_payment_of_the_wrong_amount_is_illegal(store: Store) -> None:
    order_id = await order_in(store, Status.CREATED)
    wrong = PaymentEvent(order_id=order_id, kind="paid", amount=Decimal("19.01"))
    with pytest.raises(IllegalTransition, match=r"paid 19\.01 but the total is 19\.00"):
        async with store.transaction() as tx:
            await orders.apply_payment(tx, wrong)
