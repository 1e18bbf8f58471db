"""The example order service, tested as its authors would with ``millstream.testing``.

The service is built as it runs in production (``examples.orders.build``),
its own broker and store URLs included; the harness runs it on the memory
broker and a throw-away store and drives it over HTTP and messages.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from examples.orders import build
from examples.orders.models import PaymentEvent
from examples.orders.service import OrderService
from millstream.demo import dev_token
from millstream.testing import TestApp

SECRET = "test-secret-0123456789-0123456789"
AUTH = {"Authorization": f"Bearer {dev_token(SECRET)}"}
ORDER = {"customer_id": "c-7", "items": [{"sku": "mug", "quantity": 2, "unit_price": "9.50"}]}


@pytest.fixture
def svc(tmp_path: Path) -> OrderService:
    # Its own broker and store are files that the harness must never touch.
    return build(
        broker_url=f"sqlite:///{tmp_path}/broker.db",
        store_url=f"sqlite:///{tmp_path}/state.db",
        jwt_secret=SECRET,
    )


async def create_order(t: TestApp) -> str:
    async with t.client() as http:
        reply = await http.post("/api/v1/orders", json=ORDER, headers=AUTH)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


async def test_a_payment_marks_the_order_paid(svc: OrderService, tmp_path: Path) -> None:
    async with TestApp(svc.ms, app=svc.app) as t:
        order_id = await create_order(t)
        await t.publish(
            "payments",
            PaymentEvent(order_id=order_id, kind="paid", amount=Decimal("19.00")),
            key=order_id,
        )
        await t.drain()
        assert t.handled("payments") == 1
        [created] = t.published("orders.created")
        assert created.value["order_id"] == order_id and created.key == order_id
        [changed] = t.published("orders.status-changed")
        assert (changed.value["old"], changed.value["new"]) == ("CREATED", "PAID")
        assert changed.key == order_id  # the payment's key, carried by ``publishes=``
        [declared] = svc.ms.publications["orders.status-changed"]
        assert declared.declared_by == "consumer 'payments'"
        assert t.dead_letters("payments", group="orders") == []
        assert t.handled("notifications") == 1
        assert [call.new for call in t.calls("notifications")] == ["PAID"]
        async with t.client() as http:
            order = (await http.get(f"/api/v1/orders/{order_id}", headers=AUTH)).json()
            told = await http.get(f"/api/v1/orders/{order_id}/notifications", headers=AUTH)
        assert order["status"] == "PAID"
        assert [each["status"] for each in told.json()] == ["PAID"]
    assert not (tmp_path / "state.db").exists() and not (tmp_path / "broker.db").exists()


async def test_an_illegal_move_is_dead_lettered_with_the_reason(svc: OrderService) -> None:
    async with TestApp(svc.ms, app=svc.app) as t:
        order_id = await create_order(t)
        await t.publish("payments", {"order_id": order_id, "kind": "shipped"}, key=order_id)
        await t.drain()
        [letter] = t.dead_letters("payments")
        assert letter.attempts == 1
        assert letter.error.startswith("IllegalTransition: ")
        assert "cannot move an order from CREATED to SHIPPED" in letter.error
        assert t.handled("payments") == 0 and t.published("orders.status-changed") == []


async def test_a_payment_for_an_unknown_order_is_retried_then_dead_lettered(
    svc: OrderService,
) -> None:
    async with TestApp(svc.ms, app=svc.app) as t:
        await t.publish("payments", {"order_id": "o-nope", "kind": "paid", "amount": "1.00"})
        await t.drain()
        [letter] = t.dead_letters("payments")
        assert letter.error == "attempts exhausted (4 of 4): OrderNotFound: no order 'o-nope'"
        assert len(t.calls("payments")) == 4
        assert t.clock is not None and t.clock() > 0  # the backoffs passed on the test clock


async def test_the_service_runs_again_from_an_empty_store(svc: OrderService) -> None:
    async with TestApp(svc.ms, app=svc.app) as t:
        order_id = await create_order(t)
        async with t.client() as http:  # now cached
            assert (await http.get(f"/api/v1/orders/{order_id}", headers=AUTH)).status_code == 200
    async with TestApp(svc.ms, app=svc.app) as t:
        async with t.client() as http:
            missing = await http.get(f"/api/v1/orders/{order_id}", headers=AUTH)
        assert missing.status_code == 404  # neither the old store nor the old cache answer
        assert t.published("orders.created") == []
