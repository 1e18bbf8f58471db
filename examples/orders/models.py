"""What the order service reads and writes: requests, events, and the order state machine."""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from millstream import FatalError

__all__ = [
    "EVENT_TARGET",
    "TRANSITIONS",
    "IllegalTransition",
    "NewOrder",
    "Notification",
    "Order",
    "OrderCreated",
    "OrderLine",
    "OrderList",
    "PaymentEvent",
    "Status",
    "StatusChanged",
]


class Status(enum.StrEnum):
    CREATED = "CREATED"
    PAID = "PAID"
    SHIPPED = "SHIPPED"
    REFUNDED = "REFUNDED"
    CANCELLED = "CANCELLED"


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.CREATED: frozenset({Status.PAID, Status.CANCELLED}),
    Status.PAID: frozenset({Status.SHIPPED, Status.REFUNDED}),
}
"""Where each state may go; SHIPPED, REFUNDED and CANCELLED are final."""


class IllegalTransition(FatalError):
    """An event asks for a move the state machine forbids: it can never succeed."""


Money = Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]


class OrderLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=64, examples=["SKU-1"])
    quantity: int = Field(ge=1, le=1000)
    unit_price: Money


class NewOrder(BaseModel):
    """The body of ``POST /api/v1/orders``."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(min_length=1, max_length=64, examples=["c-42"])
    currency: str = Field("EUR", pattern=r"^[A-Z]{3}$")
    items: list[OrderLine] = Field(min_length=1, max_length=100)

    def total(self) -> Decimal:
        return sum((line.unit_price * line.quantity for line in self.items), Decimal("0"))


class Order(BaseModel):
    id: str
    customer_id: str
    status: Status
    total: Decimal
    currency: str
    items: list[OrderLine]
    created_at: float
    updated_at: float


class OrderList(BaseModel):
    orders: list[Order]
    missing: list[str] = Field(description="Requested ids that name no order")


class Notification(BaseModel):
    order_id: str
    customer_id: str
    status: Status
    message: str
    created_at: float


class OrderCreated(BaseModel):
    """``orders.created``: published through the outbox when an order is written."""

    order_id: str
    customer_id: str
    total: Decimal
    currency: str


class PaymentEvent(BaseModel):
    """``payments``: what the payment provider reports about an order."""

    order_id: str
    kind: Literal["paid", "shipped", "refunded", "cancelled"]
    amount: Money | None = None


EVENT_TARGET: dict[str, Status] = {
    "paid": Status.PAID,
    "shipped": Status.SHIPPED,
    "refunded": Status.REFUNDED,
    "cancelled": Status.CANCELLED,
}


class StatusChanged(BaseModel):
    """``orders.status-changed``: published through the outbox on every move."""

    order_id: str
    customer_id: str
    old: Status
    new: Status
    at: float
