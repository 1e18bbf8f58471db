import asyncio

from pydantic import BaseModel

from millstream import FatalError, Message, Millstream, Retry

ms = Millstream()  # sqlite:///./.millstream/broker.db unless MILLSTREAM_BROKER_URL says otherwise
handled = asyncio.Event()


class Payment(BaseModel):
    order_id: str
    status: str
    amount: int


@ms.consumer(
    "payments",
    group="orders",
    concurrency=8,
    key="order_id",  # one order's payments one at a time, in publish order
    retry=Retry(attempts=5, backoff=0.2, max_backoff=30.0, jitter=0.2),
)
async def on_payment(payment: Payment, msg: Message) -> None:
    if payment.status not in {"PAID", "REFUNDED"}:
        raise FatalError(f"unknown status {payment.status!r}")  # straight to the dead letters
    print(f"{msg.topic}: {payment!r}, attempt {msg.attempt}")  # other exceptions retry
    handled.set()


async def main() -> None:
    async with ms:  # connects and starts the consumers; on exit drains and stops them
        await ms.publish("payments", Payment(order_id="o-1", status="PAID", amount=100), key="o-1")
        await handled.wait()  # then leaving the block lets on_payment finish and acks it


if __name__ == "__main__":
    asyncio.run(main())
