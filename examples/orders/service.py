"""The order service: its routes, its consumers' routers, and the app ``millstream run`` serves.

``build()`` makes one instance (tests make several, with their own
settings); the module-level ``app`` is the one ``millstream run
examples.orders:app`` serves, configured by ``MILLSTREAM_*`` variables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError

from examples.orders import notifications
from examples.orders import store as orders
from examples.orders.models import NewOrder, Notification, Order, OrderCreated, OrderList
from examples.orders.payments import payments_router
from millstream import Millstream
from millstream.cache import Cache
from millstream.web import api_group

__all__ = ["MAX_IDS", "OrderService", "build"]

MAX_IDS = 100


@dataclass(frozen=True)
class OrderService:
    ms: Millstream
    app: FastAPI
    cache: Cache[Order]


def build(**settings: Any) -> OrderService:
    """An order service; ``settings`` override the ``MILLSTREAM_*`` environment."""
    ms = Millstream(**settings)
    ms.store.schema(orders.SCHEMA)
    cache: Cache[Order] = ms.cache("orders", ttl=30.0, max_entries=50_000)

    # Written through the outbox by store.create_order; declared so the AsyncAPI
    # document lists what the service sends, with its payload.
    ms.publisher("orders.created", model=OrderCreated)
    ms.include_router(payments_router(cache))
    ms.include_router(notifications.router)

    api = api_group(ms, 1, auth=True, tags=["orders"])
    not_found: dict[int | str, dict[str, Any]] = {404: {"description": "No such order"}}

    @api.post("/orders", status_code=status.HTTP_201_CREATED, summary="Create an order")
    async def create_order(new: NewOrder, response: Response) -> Order:
        """Writes the order and its ``orders.created`` event in one transaction."""
        async with ms.store.transaction() as tx:
            order = await orders.create_order(tx, new)
        response.headers["Location"] = f"/api/v1/orders/{order.id}"
        return order

    @api.get("/orders/{order_id}", responses=not_found, summary="One order")
    async def get_order(order_id: str) -> Order:
        async def load() -> Order | None:
            return (await orders.load_orders(ms.store, [order_id])).get(order_id)

        order = await cache.get_or_load(order_id, load)
        if order is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {order_id!r}")
        return order

    @api.get("/orders", summary="Several orders by id, in one query")
    async def list_orders(
        ids: Annotated[str, Query(description="Comma-separated order ids", examples=["o-1,o-2"])],
    ) -> OrderList:
        wanted = list(dict.fromkeys(part.strip() for part in ids.split(",") if part.strip()))
        if not wanted:
            raise _bad_ids("ids must name at least one order id, e.g. ?ids=o-1,o-2", ids)
        if len(wanted) > MAX_IDS:
            raise _bad_ids(f"ids names {len(wanted)} orders; ask for at most {MAX_IDS}", ids)

        async def load_many(missing: list[str]) -> dict[str, Order]:
            return await orders.load_orders(ms.store, missing)

        found = await cache.get_many(wanted, load_many)
        return OrderList(
            orders=[found[i] for i in wanted if i in found],
            missing=[i for i in wanted if i not in found],
        )

    @api.get(
        "/orders/{order_id}/notifications",
        responses=not_found,
        summary="What the customer was told about an order",
    )
    async def order_notifications(order_id: str) -> list[Notification]:
        if not await ms.store.fetchval("SELECT 1 FROM orders WHERE id = $1", order_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {order_id!r}")
        return await orders.notifications(ms.store, order_id)

    app = ms.fastapi(title="orders", description="The millstream example order service.")
    app.include_router(api)
    return OrderService(ms, app, cache)


def _bad_ids(message: str, given: str) -> RequestValidationError:
    """A 422 shaped like FastAPI's own, as the schema documents it."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", "ids"), "msg": message, "input": given}]
    )
