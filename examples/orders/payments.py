"""Payments: the consumer that moves orders through their states as payment events say."""

from __future__ import annotations

from examples.orders import store as orders
from examples.orders.models import Order, PaymentEvent, StatusChanged
from millstream import Retry, Router, Transaction
from millstream.cache import Cache

__all__ = ["payments_router"]


def payments_router(cache: Cache[Order]) -> Router:
    """The ``payments`` consumer, invalidating ``cache`` (each service has its own)."""
    router = Router()

    @router.consumer(
        "payments",
        group="orders",
        key="order_id",
        idempotent=True,
        retry=Retry(attempts=4, backoff=0.5),
        publishes="orders.status-changed",
    )
    async def payments(event: PaymentEvent, tx: Transaction) -> StatusChanged:
        """Move the order and publish the change (through the outbox, keyed by the order:
        the payment's key); an illegal move is fatal and dead-lettered with the reason."""
        change = await orders.apply_payment(tx, event)
        tx.invalidate(cache, event.order_id)
        return change

    return router
