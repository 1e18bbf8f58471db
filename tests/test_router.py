"""Routers: consumers, links and publishers declared apart from an app, on the memory broker."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from millstream import ConfigError, Message, Millstream, Router
from millstream.brokers.memory.broker import MemoryBroker, MemoryHub
from millstream.errors import HandlerSignatureError
from millstream.runtime.handler import HandlerLink, Invoke
from millstream.runtime.spec import ConsumerSpec
from tests.support import until


class Payment(BaseModel):
    order_id: str
    amount: int


def app() -> Millstream:
    return Millstream(broker=MemoryBroker(MemoryHub()))


def payments_router() -> tuple[Router, list[Payment]]:
    router = Router()
    handled: list[Payment] = []

    @router.consumer("payments", group="billing", publishes="receipts")
    async def on_payment(payment: Payment) -> dict[str, str]:
        handled.append(payment)
        return {"order_id": payment.order_id}

    return router, handled


def named(order: list[str], name: str) -> HandlerLink:
    """A link noting ``name`` when a message passes it."""

    def link(consumer: ConsumerSpec, inner: Invoke) -> Invoke:
        async def invoke(message: Message) -> None:
            order.append(name)
            await inner(message)

        return invoke

    return link


async def test_the_prefix_goes_in_front_of_every_topic_and_names_stay() -> None:
    router, handled = payments_router()
    receipts = router.publisher("audit", model=Payment)
    ms = app()
    ms.include_router(router, prefix="shop.")
    spec = ms.specs["on_payment"]
    assert (spec.name, spec.topic, spec.group) == ("on_payment", "shop.payments", "billing")
    assert set(ms.publications) == {"shop.receipts", "shop.audit"}
    out: list[Message] = []

    audited: list[Message] = []

    @ms.consumer("shop.receipts")
    async def collect(message: Message) -> None:
        out.append(message)

    @ms.consumer("shop.audit")
    async def audit(message: Message) -> None:
        audited.append(message)

    async with ms:
        await ms.publish("payments", {"order_id": "unprefixed", "amount": 1})
        await ms.publish("shop.payments", {"order_id": "o-1", "amount": 1}, key="o-1")
        await receipts.publish(Payment(order_id="o-1", amount=1))
        await until(lambda: len(out) == 1 and len(audited) == 1)
    assert [p.order_id for p in handled] == ["o-1"] and out[0].key == "o-1"


async def test_router_links_wrap_its_consumers_only_inside_the_apps_links() -> None:
    order: list[str] = []
    router = Router()
    router.add_link(named(order, "router"))

    @router.consumer("a")
    async def routed(event: dict[str, int]) -> None:
        order.append("routed")

    ms = app()
    ms.add_link(named(order, "app"))

    @ms.consumer("b")
    async def direct(event: dict[str, int]) -> None:
        order.append("direct")

    ms.include_router(router)
    async with ms:
        await ms.publish("a", {"n": 1})
        await until(lambda: order[-1:] == ["routed"])
        await ms.publish("b", {"n": 1})
        await until(lambda: order[-1:] == ["direct"])
    assert order == ["app", "router", "routed", "app", "direct"]


async def test_a_name_clash_fails_the_include_naming_both_and_adds_nothing() -> None:
    ms = app()

    @ms.consumer("orders")
    async def on_payment(event: dict[str, int]) -> None:
        pass

    router, _ = payments_router()

    @router.consumer("refunds")
    async def on_refund(event: dict[str, int]) -> None:
        pass

    with pytest.raises(ConfigError) as failed:
        ms.include_router(router, prefix="p.")
    message = str(failed.value)
    assert "'p.payments'" in message and "'orders'" in message
    assert "test_router.payments_router.<locals>.on_payment" in message
    assert "test_a_name_clash_fails_the_include_naming_both_and_adds_nothing" in message
    assert set(ms.specs) == {"on_payment"} and ms.publications == {}


async def test_a_router_is_included_once_per_app() -> None:
    router, _ = payments_router()
    ms = app()
    ms.include_router(router)
    with pytest.raises(ConfigError, match="already included in this app"):
        ms.include_router(router, prefix="again.")


async def test_a_router_in_two_apps_gives_each_its_own_consumers() -> None:
    router, handled = payments_router()
    audit = router.publisher("audit")
    first, second = app(), app()
    first.include_router(router, prefix="eu.")
    second.include_router(router, prefix="us.")
    async with first, second:
        await first.publish("eu.payments", {"order_id": "eu-1", "amount": 1})
        await second.publish("us.payments", {"order_id": "us-1", "amount": 1})
        await until(lambda: len(handled) == 2)
        assert first.consumers["on_payment"] is not second.consumers["on_payment"]
        assert first.consumers["on_payment"].stats.acked == 1
        assert second.consumers["on_payment"].stats.acked == 1
        with pytest.raises(ConfigError, match=r"'audit' belongs to a router included in 2 apps"):
            await audit.publish({"n": 1})
    assert sorted(p.order_id for p in handled) == ["eu-1", "us-1"]


async def test_a_router_publisher_not_included_cannot_publish() -> None:
    audit = Router().publisher("audit")
    with pytest.raises(ConfigError, match="included in no app"):
        await audit.publish({"n": 1})


async def test_including_after_start_fails() -> None:
    router, _ = payments_router()
    ms = app()
    async with ms:
        with pytest.raises(ConfigError, match=r"include_router\(\) was called after start"):
            ms.include_router(router)
    assert "on_payment" not in ms.specs


def test_a_router_checks_its_consumers_when_they_are_declared() -> None:
    router = Router()
    with pytest.raises(HandlerSignatureError):

        @router.consumer("a")
        async def untyped(event) -> None:  # type: ignore[no-untyped-def]
            pass

    @router.consumer("a")
    async def twice(event: dict[str, int]) -> None:
        pass

    with pytest.raises(ConfigError, match="already has a consumer named 'twice'"):
        router.consumer("b", name="twice")(twice)


def test_declarations_after_the_include_are_not_added() -> None:
    router = Router()
    ms = app()
    ms.include_router(router)

    @router.consumer("late")
    async def late(event: dict[str, int]) -> None:
        pass

    assert "late" not in ms.specs


def test_a_router_publisher_of_another_model_than_the_apps_fails_the_include() -> None:
    router = Router()
    router.publisher("receipts", model=dict)

    @router.consumer("payments")
    async def on_payment(event: dict[str, int]) -> None:
        pass

    ms = app()
    ms.publisher("receipts", model=Payment)
    with pytest.raises(ConfigError, match=r"'receipts' already has a publisher of Payment"):
        ms.include_router(router)
    assert "on_payment" not in ms.specs


def test_a_name_declared_twice_on_the_app_is_reported_with_both_consumers() -> None:
    ms = app()

    @ms.consumer("a", name="same")
    async def first(event: dict[str, int]) -> None:
        pass

    with pytest.raises(ConfigError, match=r"consumer 'same' \(topic 'b'.*second\).*topic 'a'"):

        @ms.consumer("b", name="same")
        async def second(event: dict[str, int]) -> None:
            pass
