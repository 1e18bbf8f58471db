"""What ``TestApp`` records and how it hands the app back: handlers, publishes, HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from millstream import ConfigError, Message, Millstream, OutgoingMessage
from millstream.brokers.memory.broker import MemoryBroker
from millstream.testing import TestApp
from tests.support import until


class Payment(BaseModel):
    order_id: str
    amount: int


class Receipt(BaseModel):
    order_id: str
    total: int


async def test_handled_and_calls_name_a_consumer_by_handler_or_by_name() -> None:
    ms = Millstream("memory://")

    @ms.consumer("payments", group="orders", publishes="receipts")
    async def on_payment(payment: Payment) -> Receipt:
        return Receipt(order_id=payment.order_id, total=payment.amount)

    @ms.consumer("raw", group="audit")
    def audit(payload: bytes, msg: Message) -> None:  # a plain def, run in a thread
        pass

    async with TestApp(ms) as t:
        await t.publish("payments", Payment(order_id="o-1", amount=7), key="o-1")
        await t.publish("raw", b"\x00\x01")
        await t.drain()
        assert t.handled(on_payment) == t.handled("on_payment") == 1
        assert t.calls(on_payment) == [Payment(order_id="o-1", amount=7)]
        assert t.calls(audit) == [b"\x00\x01"]
        [receipt] = t.published("receipts")
        assert (receipt.value, receipt.key) == ({"order_id": "o-1", "total": 7}, "o-1")
        with pytest.raises(
            ValueError, match=r"no consumer named 'nope'.*\['audit', 'on_payment'\]"
        ):
            t.handled("nope")
        with pytest.raises(ValueError, match=r"handler .*Receipt is no consumer's of this app"):
            t.calls(Receipt)
        with pytest.raises(ValueError, match="topic 'elsewhere' has no consumer in this app"):
            t.dead_letters("elsewhere")


async def test_a_duplicate_the_ledger_acks_is_not_a_handled_call() -> None:
    ms = Millstream("memory://")

    @ms.consumer("payments", group="orders", idempotent=True)
    async def on_payment(payment: Payment) -> None:
        pass

    async with TestApp(ms) as t:
        twice = OutgoingMessage(b'{"order_id": "o-1", "amount": 1}', id="payment-1")
        await ms.publish_batch("payments", [twice])
        await ms.publish_batch("payments", [twice])
        await t.drain()
        assert t.stats(on_payment).acked == 2  # both copies were delivered and acked
        assert t.handled(on_payment) == 1  # one reached the handler
        assert len(t.calls(on_payment)) == 1
        # Published through ms.publish_batch, not t.publish: the app's own, so listed.
        assert [each.id for each in t.published("payments")] == ["payment-1", "payment-1"]


async def test_published_values_are_json_when_json_and_bytes_otherwise() -> None:
    ms = Millstream("memory://")

    @ms.consumer("in", group="g")
    async def forward(payload: bytes) -> None:
        await ms.publish("out", payload, headers={"kind": "raw"})
        await ms.publish("out", [1, 2])

    async with TestApp(ms) as t:
        await t.publish("in", b"\xff not json")
        await t.drain()
        first, second = t.published("out")
        assert (first.value, first.headers["kind"]) == (b"\xff not json", "raw")
        assert second.value == [1, 2] and second.payload == b"[1,2]"


async def test_the_client_reaches_the_app_without_starting_it_again() -> None:
    ms = Millstream("memory://", jwt_secret="a-test-secret-long-enough-for-hs256-keys")
    seen: list[str] = []

    @ms.consumer("pings", group="g")
    async def ping(text: str) -> None:
        seen.append(text)

    async with TestApp(ms) as t:
        consumers = dict(ms.consumers)
        async with t.client() as http:
            ready = await http.get("/health/ready")
            assert ready.status_code == 200, ready.text
            health = (await http.get("/actuator/health")).json()
        assert health["components"]["broker"]["details"]["url"] == "memory://"
        assert dict(ms.consumers) == consumers  # the same runtimes: started once
        await t.publish("pings", "hello")
        await t.drain()
        assert seen == ["hello"]


async def test_the_links_leave_with_the_harness() -> None:
    ms = Millstream("memory://")
    seen: list[dict[str, Any]] = []

    @ms.consumer("in", group="g")
    async def handle(payload: dict[str, Any]) -> None:
        seen.append(payload)
        await ms.publish("out", payload)

    async with TestApp(ms) as t:
        await t.publish("in", {"n": 1})
        await t.drain()
    # The app runs on as before, unrecorded.
    with ms.running_on(MemoryBroker()):
        async with ms:
            await ms.publish("in", {"n": 2})
            await ms.publish("in", {"n": 3})
            await until(lambda: len(seen) == 3)
    assert t.handled(handle) == 1 and len(t.published("out")) == 1


async def test_a_started_app_is_refused_and_another_app_is_no_matter() -> None:
    ms = Millstream("memory://")
    async with ms:
        async with TestApp(Millstream("memory://")):
            pass
        with pytest.raises(ConfigError, match=r"running_on\(\) was called on a started app"):
            async with TestApp(ms):
                pass


def test_public_names() -> None:
    import millstream.testing

    assert sorted(millstream.testing.__all__) == [
        "DrainTimeout",
        "ManualClock",
        "Published",
        "TestApp",
    ]
    assert issubclass(millstream.testing.DrainTimeout, AssertionError)
