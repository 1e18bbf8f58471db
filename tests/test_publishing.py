"""Publishing from handlers (``publishes=``) and declared publishers, on the memory broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from millstream import ConfigError, Message, Millstream, Retry, Transaction
from millstream.brokers.memory.broker import MemoryBroker, MemoryHub
from millstream.message import OutgoingMessage, encode
from millstream.runtime.chains import Publish
from tests.support import until


class Payment(BaseModel):
    order_id: str
    amount: int


class Receipt(BaseModel):
    order_id: str
    paid: int


def app(**settings: object) -> Millstream:
    return Millstream(broker=MemoryBroker(MemoryHub()), **settings)


def collect(ms: Millstream, topic: str) -> list[Message]:
    """Every message of ``topic``, as a consumer of its own group receives it."""
    received: list[Message] = []

    @ms.consumer(topic, name=f"collect-{topic}")
    async def gather(message: Message) -> None:
        received.append(message)

    return received


async def test_the_return_value_is_published_with_the_incoming_key() -> None:
    ms = app()
    receipts = collect(ms, "receipts")

    @ms.consumer("payments", publishes="receipts", concurrency=4)
    async def on_payment(payment: Payment) -> Receipt:
        return Receipt(order_id=payment.order_id, paid=payment.amount)

    async with ms:
        for n in range(20):
            await ms.publish("payments", Payment(order_id=f"o-{n}", amount=n), key=f"k-{n}")
        await until(lambda: len(receipts) == 20)

    by_key = {m.key: Receipt.model_validate_json(m.payload) for m in receipts}
    assert by_key == {f"k-{n}": Receipt(order_id=f"o-{n}", paid=n) for n in range(20)}
    assert ms.consumers["on_payment"].stats.acked == 20


@pytest.mark.parametrize(
    "value",
    [{"a": 1}, [1, 2], "text", b"\x00raw", Receipt(order_id="o", paid=1)],
    ids=["dict", "list", "str", "bytes", "model"],
)
async def test_each_kind_of_value_is_encoded_as_publish_encodes_it(value: object) -> None:
    ms = app()
    out = collect(ms, "out")

    @ms.consumer("in", publishes="out")
    async def echo(event: dict[str, int]) -> Any:
        return value

    async with ms:
        await ms.publish("in", {"n": 1})
        await until(lambda: len(out) == 1)
    assert out[0].payload == encode(value)


async def test_none_publishes_nothing() -> None:
    ms = app()
    out = collect(ms, "out")

    @ms.consumer("in", publishes="out")
    async def only_odd(event: dict[str, int]) -> dict[str, int] | None:
        return event if event["n"] % 2 else None

    async with ms:
        for n in range(6):
            await ms.publish("in", {"n": n})
        await until(lambda: ms.consumers["only_odd"].stats.acked == 6)
        await asyncio.sleep(0.05)
    assert sorted(m.payload for m in out) == [b'{"n":1}', b'{"n":3}', b'{"n":5}']


async def test_an_outgoing_message_keeps_its_own_key_and_headers() -> None:
    ms = app()
    out = collect(ms, "out")

    @ms.consumer("in", publishes="out")
    async def reroute(event: dict[str, int]) -> OutgoingMessage:
        return OutgoingMessage(b"routed", key="own", headers={"h": "v"})

    async with ms:
        await ms.publish("in", {"n": 1}, key="incoming")
        await until(lambda: len(out) == 1)
    assert (out[0].payload, out[0].key, out[0].headers["h"]) == (b"routed", "own", "v")


async def test_a_plain_def_handler_publishes_its_return_value_too() -> None:
    ms = app()
    out = collect(ms, "out")

    @ms.consumer("in", publishes="out")
    def double(event: dict[str, int]) -> dict[str, int]:
        return {"n": event["n"] * 2}

    async with ms:
        await ms.publish("in", {"n": 21}, key="k")
        await until(lambda: len(out) == 1)
    assert (out[0].payload, out[0].key) == (b'{"n":42}', "k")


async def test_a_failed_publish_fails_the_attempt_and_the_retry_publishes() -> None:
    ms = app()
    out = collect(ms, "out")
    failures = [RuntimeError("broker said no")]

    def flaky(inner: Publish) -> Publish:
        async def publish(topic: str, messages: Any) -> None:
            if topic == "out" and failures:
                raise failures.pop()
            await inner(topic, messages)

        return publish

    ms.add_publish_link(flaky)

    @ms.consumer("in", publishes="out", retry=Retry(attempts=3, backoff=0.01))
    async def forward(event: dict[str, int]) -> dict[str, int]:
        return event

    async with ms:
        await ms.publish("in", {"n": 1})
        await until(lambda: len(out) == 1)
        stats = ms.consumers["forward"].stats
        await until(lambda: stats.acked == 1)
    assert stats.retried == 1 and stats.dead == 0


async def test_in_a_transaction_the_value_goes_through_the_outbox(tmp_path: Path) -> None:
    """The publish chain refuses "out": the incoming message is acked all the same (the
    value waits in the outbox, committed with the handler's write) and arrives once the
    chain accepts it again."""
    ms = app(store_url=f"sqlite:///{tmp_path}/state.db", outbox_poll_interval=0.05)
    ms.store.schema("CREATE TABLE IF NOT EXISTS seen (n INTEGER)")
    out = collect(ms, "out")
    refusing = True

    def gate(inner: Publish) -> Publish:
        async def publish(topic: str, messages: Any) -> None:
            if topic == "out" and refusing:
                raise RuntimeError("not now")
            await inner(topic, messages)

        return publish

    ms.add_publish_link(gate)

    @ms.consumer("in", publishes="out")
    async def record(event: dict[str, int], tx: Transaction) -> dict[str, int]:
        await tx.execute("INSERT INTO seen (n) VALUES ($1)", event["n"])
        return event

    @ms.consumer("in", name="idempotent_record", publishes="out", idempotent=True)
    async def record_once(event: dict[str, int]) -> dict[str, int]:
        return {"n": event["n"] + 100}

    async with ms:
        await ms.publish("in", {"n": 1}, key="k")
        await until(lambda: ms.consumers["record"].stats.acked == 1)
        await until(lambda: ms.consumers["idempotent_record"].stats.acked == 1)
        assert await ms.store.fetchval("SELECT count(*) FROM seen") == 1
        waiting = await ms.store.fetch("SELECT msg_key FROM millstream_outbox")
        assert [row["msg_key"] for row in waiting] == ["k", "k"] and out == []
        refusing = False
        await until(lambda: len(out) == 2, within=10)
    assert sorted(m.payload for m in out) == [b'{"n":101}', b'{"n":1}']
    assert {m.key for m in out} == {"k"}


async def test_a_handler_annotated_to_return_none_cannot_publish() -> None:
    ms = app()
    with pytest.raises(ConfigError, match=r"consumer 'quiet' publishes to 'out'.*-> None"):

        @ms.consumer("in", publishes="out")
        async def quiet(event: dict[str, int]) -> None:
            pass


async def test_a_consumer_without_publishes_runs_the_handler_as_declared() -> None:
    ms = app()

    @ms.consumer("in")
    async def plain(event: dict[str, int]) -> None:
        pass

    @ms.consumer("in", name="publishing", publishes="out")
    async def publishing(event: dict[str, int]) -> dict[str, int]:
        return event

    async with ms:
        plain_spec = ms.consumers["plain"].spec
        publishing_spec = ms.consumers["publishing"].spec
    assert plain_spec.handler is plain
    assert len(publishing_spec.links) == len(plain_spec.links) + 1
    assert publishing_spec.handler.__wrapped__ is publishing  # type: ignore[attr-defined]
    assert ms.specs["publishing"].handler is publishing


async def test_publications_list_what_consumers_and_publishers_declare() -> None:
    ms = app()

    @ms.consumer("payments", publishes="receipts")
    async def on_payment(payment: Payment) -> Receipt:
        return Receipt(order_id=payment.order_id, paid=payment.amount)

    ms.publisher("receipts", model=Receipt)
    ms.publisher("audit")

    assert {
        topic: [(p.declared_by, p.payload) for p in pubs] for topic, pubs in ms.publications.items()
    } == {
        "receipts": [("consumer 'on_payment'", Receipt), ("publisher", Receipt)],
        "audit": [("publisher", None)],
    }


async def test_a_publisher_checks_its_model_and_publishes_through_the_chain() -> None:
    ms = app()
    out = collect(ms, "payments")
    seen: list[str] = []

    def spy(inner: Publish) -> Publish:
        async def publish(topic: str, messages: Any) -> None:
            seen.append(topic)
            await inner(topic, messages)

        return publish

    ms.add_publish_link(spy)
    payments = ms.publisher("payments", model=Payment)
    assert ms.publisher("payments", model=Payment) is payments
    with pytest.raises(ConfigError, match=r"'payments' already has a publisher of Payment"):
        ms.publisher("payments", model=Receipt)

    async with ms:
        await payments.publish(Payment(order_id="o-1", amount=5), key="o-1", headers={"h": "v"})
        await payments.publish({"order_id": "o-2", "amount": "7"}, key="o-2")
        with pytest.raises(ValidationError):
            await payments.publish({"order_id": "o-3"})
        with pytest.raises(ValidationError):
            await payments.publish(Receipt(order_id="o-4", paid=1))  # type: ignore[arg-type]
        await until(lambda: len(out) == 2)
    assert [(m.key, Payment.model_validate_json(m.payload).amount) for m in out] == [
        ("o-1", 5),
        ("o-2", 7),
    ]
    assert out[0].headers["h"] == "v" and seen == ["payments", "payments"]


@pytest.mark.parametrize("delay", [-1, float("inf"), float("nan"), "5", True])
async def test_a_delay_that_is_no_number_of_seconds_is_refused_naming_it(delay: Any) -> None:
    ms = app()
    with pytest.raises(ValueError, match=r"delay=.*expected a finite number of seconds"):
        await ms.publish("payments", {"n": 1}, delay=delay)
    with pytest.raises(ValueError, match=r"delay=.*expected a finite number of seconds"):
        await ms.publish_batch("payments", [{"n": 1}], delay=delay)


async def test_every_way_of_publishing_holds_a_delayed_message_back_for_every_group() -> None:
    """``ms.publish``, ``ms.publish_batch``, a declared publisher and a handler's
    ``OutgoingMessage`` with a ``deliver_at`` all wait on the broker, not in the caller."""
    hub = MemoryHub()
    ms = Millstream(broker=MemoryBroker(hub), poll_timeout=0.05)
    receipts = ms.publisher("receipts", model=Receipt)
    got: dict[str, list[int]] = {"audit": [], "mail": []}

    @ms.consumer("payments", group="billing", publishes="receipts")
    async def bill(payment: Payment) -> OutgoingMessage:
        at = time.time() + 60
        return OutgoingMessage(encode(Receipt(order_id="o", paid=payment.amount)), deliver_at=at)

    def keeper(group: str) -> Callable[[Receipt], Awaitable[None]]:
        async def keep(receipt: Receipt) -> None:
            got[group].append(receipt.paid)

        return keep

    for group in got:
        ms.consumer("receipts", group=group, name=group)(keeper(group))

    async with ms:
        await ms.publish("receipts", Receipt(order_id="o", paid=1), delay=60)
        await ms.publish_batch("receipts", [Receipt(order_id="o", paid=2)], delay=60)
        await receipts.publish(Receipt(order_id="o", paid=3), delay=60)
        await ms.publish("payments", Payment(order_id="o", amount=4))
        await ms.publish("receipts", Receipt(order_id="o", paid=5))
        await until(lambda: got["audit"] == [5] and got["mail"] == [5])
        await until(lambda: hub.backlog("receipts", "mail").delayed == 4)
        await asyncio.sleep(0.2)
        assert got == {"audit": [5], "mail": [5]}
        assert hub.backlog("receipts", "audit").next_due is not None
