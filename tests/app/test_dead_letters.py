"""What the app dead-letters, with which reason, and dead letters read before the start."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pydantic import BaseModel

from millstream import FatalError, Message, Millstream, Retry
from millstream.brokers.memory.broker import MemoryBroker, MemoryHub, MemorySubscription
from millstream.errors import BrokerUnavailable
from millstream.message import OutgoingMessage
from millstream.runtime import ConsumerState
from tests.app.support import app
from tests.support import until, until_equal


class Payment(BaseModel):
    order_id: str
    amount: int


async def test_poison_messages_reach_the_dead_letter_queue_with_their_reasons() -> None:
    ms = app()
    handled: list[str] = []

    @ms.consumer("payments", group="orders", retry=Retry(attempts=5, backoff=0.01))
    async def on_payment(payment: Payment) -> None:
        if payment.amount < 0:
            raise FatalError(f"negative amount {payment.amount}")
        handled.append(payment.order_id)

    async with ms:
        await ms.publish("payments", b"{not json")
        await ms.publish("payments", {"order_id": "o-1", "amount": "lots"})
        await ms.publish("payments", {"order_id": "o-2", "amount": -5})
        await ms.publish("payments", {"order_id": "o-3", "amount": 5})
        dlq = await ms.dead_letters("payments", "orders")
        await until(lambda: ms.consumers["on_payment"].stats.dead == 3)
        await until(lambda: ms.consumers["on_payment"].inflight == 0)
        letters = {letter.payload: letter for letter in await dlq.list()}

    assert handled == ["o-3"]
    assert "DecodeError" in letters[b"{not json"].error
    assert "Invalid JSON" in letters[b"{not json"].error
    assert (
        "amount: Input should be a valid integer"
        in letters[b'{"order_id":"o-1","amount":"lots"}'].error
    )
    assert letters[b'{"order_id":"o-2","amount":-5}'].error == "FatalError: negative amount -5"
    assert {letter.attempts for letter in letters.values()} == {1}


async def test_a_key_function_that_fails_dead_letters_only_that_message() -> None:
    ms = app()
    handled: list[str] = []

    @ms.consumer("t", key=lambda m: m.headers["tenant"])
    async def handle(event: dict[str, str]) -> None:
        handled.append(event["v"])

    async with ms:
        await ms.publish("t", {"v": "a"}, headers={"tenant": "x"})
        await ms.publish("t", {"v": "no tenant"})
        await ms.publish("t", {"v": "b"}, headers={"tenant": "y"})
        await until(lambda: handled == ["a", "b"])
        dlq = await ms.dead_letters("t", "handle")
        await until_equal(dlq.count, 1)
        [letter] = await dlq.list()
        assert letter.error == "key function failed: KeyError: 'tenant'"
        assert ms.consumers["handle"].state is ConsumerState.RUNNING


async def test_a_message_that_keeps_killing_its_process_is_dead_lettered() -> None:
    hub = MemoryHub(lease=0.2)
    crashed = MemoryBroker(hub)
    await crashed.connect()
    await crashed.publish("t", [OutgoingMessage(b'{"n": 1}')])
    for _ in range(2):  # two members die holding it
        sub = await crashed.subscribe("t", "handle", prefetch=1)
        assert await sub.fetch(1, timeout=1)
        crashed.abandon()
        await crashed.connect()
        await asyncio.sleep(0.25)
    ms = app(hub)
    calls: list[int] = []

    @ms.consumer("t", retry=Retry(attempts=2))
    async def handle(event: dict[str, int]) -> None:
        calls.append(event["n"])

    async with ms:
        dlq = await ms.dead_letters("t", "handle")
        await until_equal(dlq.count, 1)
        [letter] = await dlq.list()

    assert calls == []
    assert "delivered 3 times without an outcome" in letter.error


async def test_dead_letters_are_readable_before_the_app_starts_or_publishes() -> None:
    hub = MemoryHub()
    ms = app(hub)
    dlq = await ms.dead_letters("t", "handle")  # connects on use

    assert await dlq.count() == 0
    assert await dlq.list() == []


class LosesTheFirstDeadLetter(MemoryBroker):
    """The connection drops just as the first dead letter is being settled."""

    def __init__(self) -> None:
        super().__init__(MemoryHub())
        self.dropped = False

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> MemorySubscription:
        subscription = await super().subscribe(topic, group, prefetch=prefetch, member=member)
        settle = subscription.settle

        async def dropping(
            acks: Sequence[Message],
            retries: Sequence[tuple[Message, float]],
            deads: Sequence[tuple[Message, str]],
        ) -> None:
            if deads and not self.dropped:
                self.dropped = True
                self.cut()  # what this member held goes back, counted
                raise BrokerUnavailable("connection reset (test)")
            await settle(acks, retries, deads)

        subscription.settle = dropping  # type: ignore[method-assign]
        return subscription


async def test_a_dead_letter_whose_settling_was_lost_is_buried_again_with_its_reason() -> None:
    broker = LosesTheFirstDeadLetter()
    ms = Millstream(broker=broker, reconnect_backoff=0.01, poll_timeout=0.05)
    calls: list[int] = []

    @ms.consumer("t", retry=Retry(attempts=1))
    async def handle(event: dict[str, int]) -> None:
        calls.append(event["n"])
        raise FatalError("order 7 does not exist")

    reader = MemoryBroker(broker.hub)  # another connection: the consumer's drops
    await reader.connect()
    async with ms:
        await ms.publish("t", {"n": 7})
        dlq = await reader.dead_letters("t", "handle")
        await until_equal(dlq.count, 1)
        [letter] = await dlq.list()

    assert broker.dropped and calls == [7]  # handled once, not again on its redelivery
    assert letter.error == "FatalError: order 7 does not exist"
