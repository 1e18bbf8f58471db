"""A payment provider and a stream of customers, for the demo.

Customers place orders at ``rate`` per second through the same code as
``POST /api/v1/orders``. The provider answers each ``orders.created`` with
a payment (one in ten is cancelled instead) and each paid order with a
shipment (one in five is refunded). Every ``poison_every``-th event is
wrong on purpose, so the dead-letter queue has something to show:

- a shipment for an order that was never paid (an illegal transition);
- a payment whose amount does not match the order;
- bytes that are not a payment event at all;
- a payment for an order that does not exist (retried, then dead).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import AsyncIterator
from decimal import Decimal

from examples.orders import store as orders
from examples.orders.models import NewOrder, OrderCreated, OrderLine, Status, StatusChanged
from millstream import Millstream

__all__ = ["PaymentSimulator"]

log = logging.getLogger("examples.orders.simulator")

SKUS = ("kettle", "teapot", "mug", "grinder", "scale", "filter")


class PaymentSimulator:
    """Registers the provider's consumers on ``ms`` and runs the customers while it is started."""

    def __init__(self, ms: Millstream, *, rate: float = 5.0, poison_every: int = 25) -> None:
        self.ms = ms
        self.rate = rate
        self.poison_every = poison_every
        self._events = itertools.count(1)
        self._random = random.Random(7)
        self.orders_placed = 0

        @ms.consumer("orders.created", group="payment-provider", key="order_id")
        async def charge(created: OrderCreated) -> None:
            n = next(self._events)
            if n % self.poison_every == 0:
                poison = (n // self.poison_every) % 4
                await self._publish_poison(created.order_id, created.total, poison)
                return
            if self._random.random() < 0.1:
                await self._pay(created.order_id, "cancelled")
            else:
                await self._pay(created.order_id, "paid", created.total)

        @ms.consumer("orders.status-changed", group="shipping", key="order_id")
        async def ship(change: StatusChanged) -> None:
            if change.new is Status.PAID:
                await self._pay(
                    change.order_id, "refunded" if self._random.random() < 0.2 else "shipped"
                )

    async def _pay(self, order_id: str, kind: str, amount: Decimal | None = None) -> None:
        event: dict[str, object] = {"order_id": order_id, "kind": kind}
        if amount is not None:
            event["amount"] = str(amount)
        await self.ms.publish("payments", event, key=order_id)

    async def _publish_poison(self, order_id: str, total: Decimal, kind: int) -> None:
        if kind == 0:
            await self._pay(order_id, "shipped")  # never paid: illegal
        elif kind == 1:
            await self._pay(order_id, "paid", total + 1)  # wrong amount
        elif kind == 2:
            await self.ms.publish("payments", b"\x00 not a payment", key=order_id)
        else:
            await self._pay(f"{order_id}-missing", "paid", total)

    async def customers(self) -> None:
        """Place orders at ``rate`` per second until cancelled."""
        interval = 1.0 / self.rate
        while True:
            new = NewOrder(
                customer_id=f"c-{self._random.randint(1, 500)}",
                currency="EUR",
                items=[
                    OrderLine(
                        sku=self._random.choice(SKUS),
                        quantity=self._random.randint(1, 3),
                        unit_price=Decimal(self._random.randint(300, 9000)) / 100,
                    )
                ],
            )
            try:
                async with self.ms.store.transaction() as tx:
                    await orders.create_order(tx, new)
                self.orders_placed += 1
            except Exception:
                log.exception("the simulated customer could not place an order")
            await asyncio.sleep(interval)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self.customers(), name="demo-customers")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
