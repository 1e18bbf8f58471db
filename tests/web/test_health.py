"""``/health/live``, ``/health/ready``, ``/health/consumers`` and ``/actuator/health``: what
probes and operators see."""

from __future__ import annotations

import asyncio
import time

import pytest

from millstream import Millstream
from millstream.brokers.memory.broker import MemoryHub
from millstream.errors import AuthenticationError
from millstream.runtime import ConsumerState
from tests.support import until
from tests.web import GatedBroker, Lifespan, client, memory_app, serving


async def test_live_answers_and_reports_event_loop_lag() -> None:
    app = memory_app().fastapi()
    async with serving(app) as http:
        quiet = await http.get("/health/live")
        assert quiet.status_code == 200
        assert quiet.json()["status"] == "UP"
        assert quiet.json()["eventLoopLagMs"] < 100

        await asyncio.sleep(0.05)  # the lag watcher is sleeping: block the loop under it
        time.sleep(0.8)  # noqa: ASYNC251 - the blocked loop is what is measured
        await asyncio.sleep(0.05)  # the watcher wakes late and records it
        blocked = await http.get("/health/live")
        assert blocked.status_code == 200
        assert blocked.json()["eventLoopLagMs"] >= 250


@pytest.mark.parametrize("consumers_in_readiness", [False, True])
async def test_a_broker_outage_shows_in_consumers_health_and_in_readiness_only_if_asked(
    consumers_in_readiness: bool,
) -> None:
    """Readiness means "send me HTTP traffic": by default a broker outage leaves it UP
    (the outbox takes writes meanwhile) and turns ``/health/consumers`` DOWN;
    ``health_ready_consumers`` puts the consumers into readiness."""
    broker = GatedBroker()
    ms = Millstream(
        broker=broker,
        poll_timeout=0.05,
        reconnect_backoff=0.02,
        health_ready_consumers=consumers_in_readiness,
    )

    @ms.consumer("payments")
    async def on_payment(event: dict[str, int]) -> None: ...

    @ms.consumer("refunds")
    async def on_refund(event: dict[str, int]) -> None: ...

    app = ms.fastapi()
    lifespan = Lifespan(app)
    async with client(app) as http:
        for path in ("/health/ready", "/health/consumers"):
            before = await http.get(path)
            assert (before.status_code, before.json()["status"]) == (503, "OUT_OF_SERVICE")

        await lifespan.startup()
        ready = await http.get("/health/ready")
        if consumers_in_readiness:
            assert (ready.status_code, ready.json()) == (503, {"status": "DOWN"})
        else:
            assert (ready.status_code, ready.json()) == (200, {"status": "UP"})
        consumers = await http.get("/health/consumers")
        assert consumers.status_code == 503
        assert consumers.json() == {
            "status": "DOWN",
            "broker": "DOWN",
            "consumers": {"on_payment": "DOWN", "on_refund": "DOWN"},
        }
        actuator = await http.get("/actuator/health")
        assert actuator.status_code == 503
        broker_part = actuator.json()["components"]["broker"]
        assert broker_part["status"] == "DOWN"
        assert "connection refused" in broker_part["details"]["error"]
        refunds = actuator.json()["components"]["consumers"]["components"]["on_refund"]
        assert refunds["status"] == "DOWN"
        assert refunds["details"]["state"] == "RECONNECTING"
        assert "connection refused" in refunds["details"]["error"]

        broker.reachable = True
        await until(lambda: all(c.state is ConsumerState.RUNNING for c in ms.consumers.values()))
        for path in ("/health/ready", "/health/consumers", "/actuator/health"):
            answer = await http.get(path)
            assert (answer.status_code, answer.json()["status"]) == (200, "UP"), path
        await lifespan.shutdown()


async def test_without_consumers_the_broker_is_seen_through_its_ping() -> None:
    broker = GatedBroker()
    app = Millstream(broker=broker).fastapi()
    async with serving(app) as http:
        assert (await http.get("/health/ready")).status_code == 200
        down = await http.get("/health/consumers")
        assert (down.status_code, down.json()["broker"]) == (503, "DOWN")
        broker.reachable = True
        up = await http.get("/health/consumers")
        assert (up.status_code, up.json()) == (
            200,
            {"status": "UP", "broker": "UP", "consumers": {}},
        )


async def test_ready_turns_503_as_soon_as_shutdown_begins() -> None:
    ms = memory_app(drain_timeout=5)
    entered = asyncio.Event()
    release = asyncio.Event()

    @ms.consumer("t")
    async def slow(event: dict[str, int]) -> None:
        entered.set()
        await release.wait()

    app = ms.fastapi()
    lifespan = Lifespan(app)
    await lifespan.startup()
    async with client(app) as http:
        assert (await http.get("/health/ready")).status_code == 200
        await ms.publish("t", {"n": 1})
        await entered.wait()
        stopping = asyncio.ensure_future(lifespan.shutdown())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # draining the handler that is still running
        during = await http.get("/health/ready")
        assert (during.status_code, during.json()) == (503, {"status": "OUT_OF_SERVICE"})
        actuator = await http.get("/actuator/health")
        assert actuator.status_code == 503
        assert actuator.json()["status"] == "OUT_OF_SERVICE"
        assert (await http.get("/health/live")).status_code == 200  # alive while draining
        release.set()
        await stopping
        assert (await http.get("/health/ready")).status_code == 503


async def test_begin_shutdown_makes_ready_503_before_the_lifespan_ends() -> None:
    """What ``millstream run`` does on SIGTERM, before uvicorn stops listening."""
    ms = memory_app()
    app = ms.fastapi()
    async with serving(app) as http:
        assert (await http.get("/health/ready")).status_code == 200
        ms.web.begin_shutdown()
        assert (await http.get("/health/ready")).status_code == 503


async def test_actuator_reports_each_consumer_with_its_details() -> None:
    hub = MemoryHub()
    ms = memory_app(hub)
    release = asyncio.Event()
    started = 0

    @ms.consumer("payments", concurrency=3)
    async def on_payment(event: dict[str, int]) -> None:
        nonlocal started
        started += 1
        await release.wait()

    app = ms.fastapi()
    async with serving(app) as http:
        await ms.publish_batch("payments", [{"n": i} for i in range(5)])
        await until(lambda: started == 3)
        response = await http.get("/actuator/health")
        assert response.status_code == 200
        document = response.json()
        assert document["status"] == "UP"
        assert document["components"]["broker"] == {
            "status": "UP",
            "details": {"url": "memory://"},
        }
        consumers = document["components"]["consumers"]
        assert consumers["status"] == "UP"
        payments = consumers["components"]["on_payment"]
        details = payments["details"]
        assert payments["status"] == "UP"
        assert details["state"] == "RUNNING"
        assert details["topic"] == "payments"
        assert details["group"] == "on_payment"
        assert details["lag"] == 5  # three in handlers, two fetched and waiting: none acked
        assert details["partitionCount"] == 0
        assert details["inflight"] == 5
        assert details["concurrency"] == 3
        now_ms = time.time() * 1000
        assert now_ms - 5000 < details["lastPollMs"] <= now_ms
        release.set()
        await until(lambda: hub.lag("payments", "on_payment") == 0)
        settled = (await http.get("/actuator/health")).json()
        details = settled["components"]["consumers"]["components"]["on_payment"]["details"]
        assert (details["lag"], details["inflight"]) == (0, 0)


async def test_a_failed_consumer_makes_consumers_and_the_service_down() -> None:
    broker = GatedBroker(error=AuthenticationError("bad password for user 'orders'"))
    ms = Millstream(broker=broker, poll_timeout=0.05)

    @ms.consumer("payments")
    async def on_payment(event: dict[str, int]) -> None: ...

    app = ms.fastapi()
    async with serving(app) as http:
        await until(lambda: ms.consumers["on_payment"].state is ConsumerState.FAILED)
        ready = await http.get("/health/consumers")
        assert (ready.status_code, ready.json()["status"]) == (503, "DOWN")
        actuator = await http.get("/actuator/health")
        assert actuator.status_code == 503
        document = actuator.json()
        assert document["status"] == "DOWN"
        payments = document["components"]["consumers"]["components"]["on_payment"]
        assert payments["status"] == "DOWN"
        assert payments["details"]["state"] == "FAILED"
        assert payments["details"]["error"] == "bad password for user 'orders'"


async def test_one_failed_consumer_among_running_ones_makes_the_service_down() -> None:
    hub = MemoryHub()
    ms = memory_app(hub)

    @ms.consumer("payments")
    async def on_payment(event: dict[str, int]) -> None: ...

    @ms.consumer("refunds")
    async def on_refund(event: dict[str, int]) -> None: ...

    app = ms.fastapi()
    async with serving(app) as http:
        assert (await http.get("/health/ready")).status_code == 200
        # The runtime's own path to FAILED is refused credentials; here one consumer
        # is put there directly so the other keeps running.
        ms.consumers["on_refund"].state = ConsumerState.FAILED
        document = (await http.get("/actuator/health")).json()
        assert document["status"] == "DOWN"
        assert document["components"]["broker"]["status"] == "UP"
        components = document["components"]["consumers"]["components"]
        assert components["on_payment"]["status"] == "UP"
        assert components["on_refund"]["status"] == "DOWN"
        assert (await http.get("/health/consumers")).status_code == 503
        assert (await http.get("/health/ready")).status_code == 200
        ms.consumers["on_refund"].state = ConsumerState.RUNNING


async def test_a_lag_threshold_makes_consumers_down_until_the_backlog_drains() -> None:
    ms = memory_app(health_max_lag=10)
    gate = asyncio.Event()

    @ms.consumer("payments", concurrency=4)
    async def on_payment(event: dict[str, int]) -> None:
        await gate.wait()

    app = ms.fastapi()
    async with serving(app) as http:
        await ms.publish_batch("payments", [{"n": i} for i in range(10)])
        await asyncio.sleep(0.05)
        assert (await http.get("/health/consumers")).status_code == 200  # 10 is not over 10
        await ms.publish("payments", {"n": 10})
        lagging = await http.get("/health/consumers")
        assert (lagging.status_code, lagging.json()["status"]) == (503, "DOWN")
        document = (await http.get("/actuator/health")).json()
        payments = document["components"]["consumers"]["components"]["on_payment"]
        assert (payments["status"], payments["details"]["lag"]) == ("DOWN", 11)
        gate.set()
        await until(lambda: ms.consumers["on_payment"].stats.acked == 11)
        await until(lambda: ms.consumers["on_payment"].inflight == 0)
        assert (await http.get("/health/consumers")).status_code == 200


async def test_a_paused_consumer_keeps_the_service_ready() -> None:
    ms = memory_app()

    @ms.consumer("payments")
    async def on_payment(event: dict[str, int]) -> None: ...

    app = ms.fastapi()
    async with serving(app) as http:
        ms.consumers["on_payment"].pause()
        ready = await http.get("/health/ready")
        assert (ready.status_code, ready.json()) == (200, {"status": "UP"})
        document = (await http.get("/actuator/health")).json()
        payments = document["components"]["consumers"]["components"]["on_payment"]
        assert (payments["status"], payments["details"]["state"]) == ("UP", "PAUSED")
