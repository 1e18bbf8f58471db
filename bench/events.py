"""The benchmark's payload: ~200-byte JSON order events and their model."""

from __future__ import annotations

from pydantic import BaseModel


class OrderEvent(BaseModel):
    order_id: str
    customer_id: str
    status: str
    amount: int
    currency: str
    sku: str
    quantity: int
    created_at: str


def order_event(n: int) -> OrderEvent:
    return OrderEvent(
        order_id=f"o-{n:08d}",
        customer_id=f"c-{n % 5000:06d}",
        status=("CREATED", "PAID", "SHIPPED")[n % 3],
        amount=1000 + n % 90000,
        currency="EUR",
        sku=f"SKU-{n % 997:05d}-WIDGET-DELUXE-EDITION",
        quantity=1 + n % 7,
        created_at="2026-11-26T16:38:53.123456+00:00",
    )


def order_events(start: int, count: int) -> list[OrderEvent]:
    return [order_event(n) for n in range(start, start + count)]
