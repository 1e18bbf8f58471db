"""The order tables and the queries on them; every write takes the caller's transaction."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson

from examples.orders.models import (
    EVENT_TARGET,
    TRANSITIONS,
    IllegalTransition,
    NewOrder,
    Notification,
    Order,
    OrderCreated,
    OrderLine,
    PaymentEvent,
    Status,
    StatusChanged,
)
from millstream import RetryableError, Store, Transaction

__all__ = [
    "SCHEMA",
    "OrderNotFound",
    "apply_payment",
    "create_order",
    "load_orders",
    "notifications",
    "record_notification",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    status TEXT NOT NULL,
    total_cents BIGINT NOT NULL,
    currency TEXT NOT NULL,
    items TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS order_notifications (
    order_id TEXT NOT NULL,
    status TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (order_id, status)
);
"""

_COLUMNS = "id, customer_id, status, total_cents, currency, items, created_at, updated_at"


class OrderNotFound(RetryableError):
    """A payment for an order this service does not know (yet): retried, then dead-lettered."""


def _cents(amount: Decimal) -> int:
    return int(amount * 100)


def _money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)  # 1900 -> Decimal("19.00")


def _order(row: dict[str, Any]) -> Order:
    return Order(
        id=row["id"],
        customer_id=row["customer_id"],
        status=Status(row["status"]),
        total=_money(row["total_cents"]),
        currency=row["currency"],
        items=[OrderLine.model_validate(item) for item in orjson.loads(row["items"])],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def create_order(tx: Transaction, new: NewOrder) -> Order:
    """Write the order and its ``orders.created`` event, both or neither."""
    now = time.time()
    order_id = f"o-{uuid.uuid4().hex[:16]}"
    items = orjson.dumps([line.model_dump(mode="json") for line in new.items]).decode()
    await tx.execute(
        f"INSERT INTO orders ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        order_id,
        new.customer_id,
        Status.CREATED.value,
        _cents(new.total()),
        new.currency,
        items,
        now,
    )
    tx.publish(
        "orders.created",
        OrderCreated(
            order_id=order_id,
            customer_id=new.customer_id,
            total=new.total(),
            currency=new.currency,
        ),
        key=order_id,
    )
    return Order(
        id=order_id,
        customer_id=new.customer_id,
        status=Status.CREATED,
        total=new.total(),
        currency=new.currency,
        items=new.items,
        created_at=now,
        updated_at=now,
    )


async def load_orders(store: Store, ids: Sequence[str]) -> dict[str, Order]:
    """The orders among ``ids``, by id, in one query."""
    if not ids:
        return {}
    placeholders = ", ".join(f"${n}" for n in range(1, len(ids) + 1))
    rows = await store.fetch(f"SELECT {_COLUMNS} FROM orders WHERE id IN ({placeholders})", *ids)
    return {row["id"]: _order(row) for row in rows}


async def apply_payment(tx: Transaction, event: PaymentEvent) -> StatusChanged:
    """Move the order as ``event`` says, or raise ``IllegalTransition``; returns the change."""
    row = await tx.fetchrow(
        "SELECT id, customer_id, status, total_cents FROM orders WHERE id = $1", event.order_id
    )
    if row is None:
        raise OrderNotFound(f"no order {event.order_id!r}")
    old, new = Status(row["status"]), EVENT_TARGET[event.kind]
    if new not in TRANSITIONS.get(old, frozenset()):
        raise IllegalTransition(
            f"order {event.order_id}: {event.kind!r} cannot move an order from {old} to {new}"
        )
    if event.kind == "paid" and event.amount != _money(row["total_cents"]):
        raise IllegalTransition(
            f"order {event.order_id}: paid {event.amount} but the total is "
            f"{_money(row['total_cents'])}"
        )
    now = time.time()
    moved = await tx.execute(
        "UPDATE orders SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4",
        new.value,
        now,
        event.order_id,
        old.value,
    )
    if moved != 1:  # another instance moved it since we read it: read again on the retry
        raise RetryableError(f"order {event.order_id} changed while moving it from {old}")
    return StatusChanged(
        order_id=event.order_id, customer_id=row["customer_id"], old=old, new=new, at=now
    )


_MESSAGES = {
    Status.PAID: "We received your payment for order {id}.",
    Status.SHIPPED: "Order {id} is on its way.",
    Status.REFUNDED: "Order {id} was refunded.",
    Status.CANCELLED: "Order {id} was cancelled.",
}


async def record_notification(tx: Transaction, change: StatusChanged) -> None:
    await tx.execute(
        "INSERT INTO order_notifications (order_id, status, customer_id, message, created_at) "
        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        change.order_id,
        change.new.value,
        change.customer_id,
        _MESSAGES.get(change.new, "Order {id} is now " + change.new.value).format(
            id=change.order_id
        ),
        change.at,
    )


async def notifications(store: Store, order_id: str) -> list[Notification]:
    rows = await store.fetch(
        "SELECT order_id, customer_id, status, message, created_at FROM order_notifications "
        "WHERE order_id = $1 ORDER BY created_at",
        order_id,
    )
    return [Notification.model_validate(row) for row in rows]
