"""The example order service end to end: HTTP in, consumers, store, outbox, cache.

On SQLite (broker and store) in process, and on PostgreSQL with Redis as
broker and cache bus, two instances sharing them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.orders import build
from examples.orders.service import OrderService
from millstream import Message, OutgoingMessage
from tests.brokers.redis_server import RedisServer, free_port
from tests.conftest import require_service
from tests.examples.served import AUTH, ORDER, SECRET, eventually, ready, serve, status_of
from tests.support import until
from tests.web import serving


def service(broker_url: str, store_url: str, **settings: Any) -> OrderService:
    return build(
        broker_url=broker_url,
        store_url=store_url,
        jwt_secret=SECRET,
        settle_interval=0.001,
        outbox_poll_interval=0.05,
        **settings,
    )


@pytest.fixture
async def sqlite_service(tmp_path: Path) -> AsyncIterator[tuple[OrderService, list[Message]]]:
    svc = service(f"sqlite:///{tmp_path}/broker.db", f"sqlite:///{tmp_path}/state.db")
    created: list[Message] = []

    @svc.ms.consumer("orders.created", group="test-observer")
    async def observe(event: bytes, msg: Message) -> None:
        created.append(msg)

    yield svc, created


async def test_an_order_goes_from_request_to_shipped_with_notifications(
    sqlite_service: tuple[OrderService, list[Message]],
) -> None:
    svc, created = sqlite_service
    async with serving(svc.app) as http:
        assert (await http.post("/api/v1/orders", json=ORDER)).status_code == 401
        bad = await http.post(
            "/api/v1/orders", json={**ORDER, "items": [{"sku": "mug", "quantity": 0}]}, headers=AUTH
        )
        assert bad.status_code == 422
        assert "quantity" in bad.text and "unit_price" in bad.text

        reply = await http.post("/api/v1/orders", json=ORDER, headers=AUTH)
        assert reply.status_code == 201, reply.text
        order = reply.json()
        order_id = order["id"]
        assert reply.headers["location"] == f"/api/v1/orders/{order_id}"
        assert (order["status"], Decimal(order["total"])) == ("CREATED", Decimal("19.00"))

        # The event went out through the outbox, once, keyed by the order.
        await until(lambda: len(created) == 1)
        assert created[0].key == order_id
        assert await status_of(http, order_id) == "CREATED"  # now cached

        ms = svc.ms
        await ms.publish("payments", {"order_id": order_id, "kind": "paid", "amount": "19.00"})
        await eventually(lambda: status_of(http, order_id), "PAID")  # the cache was invalidated
        await ms.publish("payments", {"order_id": order_id, "kind": "shipped"})
        await eventually(lambda: status_of(http, order_id), "SHIPPED")

        async def told() -> list[str]:
            reply = await http.get(f"/api/v1/orders/{order_id}/notifications", headers=AUTH)
            return [item["status"] for item in reply.json()]

        await eventually(told, ["PAID", "SHIPPED"])
        health = (await http.get("/actuator/health")).json()
        assert health["components"]["store"] == {
            "status": "UP",
            "details": {"url": svc.ms.settings.store_url, "outboxPending": 0},
        }
        metrics = (await http.get("/metrics")).text
        assert "millstream_outbox_published_total 3.0" in metrics  # created, PAID, SHIPPED
        missing = await http.get("/api/v1/orders/o-nope", headers=AUTH)
        assert missing.status_code == 404 and "o-nope" in missing.text
        assert (
            await http.get("/api/v1/orders/o-nope/notifications", headers=AUTH)
        ).status_code == 404


async def test_an_illegal_transition_is_dead_lettered_with_the_reason(
    sqlite_service: tuple[OrderService, list[Message]],
) -> None:
    svc, _ = sqlite_service
    async with serving(svc.app) as http:
        order_id = (await http.post("/api/v1/orders", json=ORDER, headers=AUTH)).json()["id"]
        await svc.ms.publish("payments", {"order_id": order_id, "kind": "shipped"})
        await svc.ms.publish("payments", {"order_id": order_id, "kind": "paid", "amount": "1.00"})
        await svc.ms.publish("payments", b"not json at all")

        async def letters() -> list[str]:
            reply = await http.get("/admin/consumers/payments/dead-letters", headers=AUTH)
            return sorted(item["error"] for item in reply.json()["items"])

        deadline = time.monotonic() + 15
        while len(found := await letters()) < 3:
            assert time.monotonic() < deadline, found
            await asyncio.sleep(0.05)
        assert "from CREATED to SHIPPED" in found[2] or any(
            "CREATED to SHIPPED" in e for e in found
        )
        assert any("but the total is 19.00" in error for error in found)
        assert any("does not validate as PaymentEvent" in error for error in found)
        assert await status_of(http, order_id) == "CREATED"  # nothing applied


async def test_many_orders_are_read_with_one_query(
    sqlite_service: tuple[OrderService, list[Message]],
) -> None:
    svc, _ = sqlite_service
    async with serving(svc.app) as http:
        ids = [
            (await http.post("/api/v1/orders", json=ORDER, headers=AUTH)).json()["id"]
            for _ in range(3)
        ]
        store = svc.ms.store
        queries: list[str] = []
        real_fetch = store.fetch

        async def counting_fetch(sql: str, *args: Any) -> Any:
            queries.append(sql)
            return await real_fetch(sql, *args)

        store.fetch = counting_fetch  # type: ignore[method-assign]
        reply = await http.get(
            f"/api/v1/orders?ids={ids[0]},o-unknown,{ids[1]},{ids[2]}", headers=AUTH
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert [o["id"] for o in body["orders"]] == [ids[0], ids[1], ids[2]]
        assert body["missing"] == ["o-unknown"]
        assert len(queries) == 1
        # A second read of the same ids is served from the cache: no query at all.
        await http.get(f"/api/v1/orders?ids={ids[0]},{ids[1]}", headers=AUTH)
        assert len(queries) == 1
        too_many = ",".join(f"o-{n}" for n in range(101))
        reply = await http.get(f"/api/v1/orders?ids={too_many}", headers=AUTH)
        assert reply.status_code == 422 and "at most 100" in reply.text
        metrics = (await http.get("/metrics")).text
        assert 'millstream_cache_hits_total{cache="orders"}' in metrics
        assert 'millstream_cache_misses_total{cache="orders"}' in metrics


async def test_two_instances_share_postgres_and_redis(postgres_url: str) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    # The example's topics have fixed names: a database of their own keeps runs apart.
    broker = f"redis://127.0.0.1:6379/{REDIS_DB}?lease=5"
    await _drop_topics()
    first = service(broker, postgres_url, cache_url="redis://127.0.0.1:6379/0")
    second = service(broker, postgres_url, cache_url="redis://127.0.0.1:6379/0")
    async with serving(first.app) as a, serving(second.app) as b:
        order_id = (await a.post("/api/v1/orders", json=ORDER, headers=AUTH)).json()["id"]
        assert await status_of(b, order_id) == "CREATED"  # written through A, read through B
        assert await status_of(a, order_id) == "CREATED"  # both now hold it in their caches
        # The provider sends the same payment twice (one message id): one effect in all.
        paid = OutgoingMessage(
            b'{"order_id": "%s", "kind": "paid", "amount": "19"}' % order_id.encode(), key=order_id
        )
        await first.ms.publish_batch("payments", [paid])
        await second.ms.publish_batch("payments", [paid])
        # Whichever instance handled the payment, the other's cached read was invalidated.
        await eventually(lambda: status_of(b, order_id), "PAID")
        await eventually(lambda: status_of(a, order_id), "PAID")
        assert first.cache.hits + second.cache.hits >= 1
        await eventually(lambda: _handled(first, second), 2)  # both copies were delivered
        changes = await first.ms.store.fetchval(
            "SELECT COUNT(*) FROM millstream_outbox WHERE topic = 'orders.status-changed'"
        )
        assert changes == 1
    await _drop_topics()


REDIS_DB = 9


async def _drop_topics() -> None:
    import redis.asyncio

    client = redis.asyncio.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        for pattern in ("payments*", "orders.*"):
            keys = [key async for key in client.scan_iter(match=pattern)]
            if keys:
                await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_two_served_processes_share_postgres_and_a_redis_broker(
    postgres_url: str, tmp_path: Path
) -> None:
    """``millstream run examples.orders:app`` twice, as two machines would run it."""
    require_service("Redis", "127.0.0.1", 6379)
    await _drop_topics()
    env = {
        **os.environ,
        "MILLSTREAM_BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}?lease=5",
        "MILLSTREAM_STORE_URL": postgres_url,
        "MILLSTREAM_CACHE_URL": "redis://127.0.0.1:6379/0",
        "MILLSTREAM_JWT_SECRET": SECRET,
    }
    ports = [free_port(), free_port()]
    logs = [(tmp_path / f"instance-{n}.log").open("w") for n in range(2)]
    processes = [serve(port, env, log) for port, log in zip(ports, logs, strict=True)]
    try:
        clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") for port in ports]
        a, b = clients
        for http in clients:
            await eventually(lambda http=http: ready(http), True, within=30)
        order_id = (await a.post("/api/v1/orders", json=ORDER, headers=AUTH)).json()["id"]
        assert await status_of(b, order_id) == "CREATED"
        publisher = build(broker_url=env["MILLSTREAM_BROKER_URL"], store_url=postgres_url)
        await publisher.ms.publish(
            "payments", {"order_id": order_id, "kind": "paid", "amount": "19.00"}
        )
        await publisher.ms.broker.close()
        await eventually(lambda: status_of(b, order_id), "PAID")
        await eventually(lambda: status_of(a, order_id), "PAID")

        async def told() -> int:
            reply = await b.get(f"/api/v1/orders/{order_id}/notifications", headers=AUTH)
            return len(reply.json())

        await eventually(told, 1)
        for http in clients:
            await http.aclose()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(p.wait, 30) for p in processes]
        for log in logs:
            log.close()
        await _drop_topics()
    assert codes == [0, 0], [(tmp_path / f"instance-{n}.log").read_text()[-2000:] for n in range(2)]


async def _handled(*services: OrderService) -> int:
    return sum(s.ms.consumers["payments"].stats.acked for s in services)


async def test_a_broker_outage_keeps_the_api_ready_and_the_event_arrives_after_it(
    tmp_path: Path,
) -> None:
    """The order service on a private Redis that is stopped under it: readiness stays 200
    (the API keeps taking orders through the outbox), ``/health/consumers`` turns 503,
    an order posted meanwhile answers 201, and its event is delivered once Redis is back."""
    with RedisServer(tmp_path / "redis") as server:
        svc = service(server.url, f"sqlite:///{tmp_path}/state.db", reconnect_max_backoff=0.5)
        created: list[str | None] = []

        @svc.ms.consumer("orders.created", group="test-observer")
        async def observe(event: bytes, msg: Message) -> None:
            created.append(msg.key)

        async with serving(svc.app) as http:
            await until(lambda: svc.ms.consumers["observe"].state.value == "RUNNING")
            assert (await http.get("/health/consumers")).status_code == 200

            server.stop(kill=True)

            async def consumers_health() -> int:
                return (await http.get("/health/consumers")).status_code

            await eventually(consumers_health, 503)
            assert (await http.get("/health/ready")).status_code == 200
            reply = await http.post("/api/v1/orders", json=ORDER, headers=AUTH)
            assert reply.status_code == 201, reply.text
            order_id = reply.json()["id"]
            assert (await http.get("/health/ready")).status_code == 200
            assert created == []

            server.start()
            await eventually(consumers_health, 200, within=30)
            await until(lambda: created == [order_id], within=30)
