from fastapi import HTTPException
from pydantic import BaseModel

from millstream import Millstream, Transaction

ms = Millstream()  # store: sqlite:///./.millstream/state.db, or MILLSTREAM_STORE_URL
ms.store.schema("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, status TEXT NOT NULL)")
orders_cache = ms.cache("orders", ttl=30)
app = ms.fastapi()


class NewOrder(BaseModel):
    id: str


class Order(BaseModel):
    id: str
    status: str


class Payment(BaseModel):
    order_id: str


@app.post("/api/v1/orders", status_code=201)  # an HTTP handler
async def create(new: NewOrder) -> Order:
    async with ms.store.transaction() as tx:
        await tx.execute("INSERT INTO orders (id, status) VALUES ($1, $2)", new.id, "CREATED")
        tx.publish("orders.created", new, key=new.id)  # sent only if this commits
    return Order(id=new.id, status="CREATED")


@app.get("/api/v1/orders/{order_id}")
async def read(order_id: str) -> Order:
    async def load() -> Order | None:
        rows = await ms.store.fetch("SELECT id, status FROM orders WHERE id = $1", order_id)
        return Order.model_validate(rows[0]) if rows else None

    order: Order | None = await orders_cache.get_or_load(order_id, load)  # a hit skips the query
    if order is None:
        raise HTTPException(404, f"no order {order_id!r}")
    return order


@ms.consumer("payments", group="orders", idempotent=True)
async def on_payment(event: Payment, tx: Transaction) -> None:  # a consumer, in a transaction
    await tx.execute("UPDATE orders SET status = $1 WHERE id = $2", "PAID", event.order_id)
    tx.invalidate(orders_cache, event.order_id)  # on every instance, after the commit
