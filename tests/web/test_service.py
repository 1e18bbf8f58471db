"""``ms.fastapi()``, ``ms.lifespan`` and ``ms.router``: consumers run with the server."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from millstream.brokers.memory.broker import MemoryHub
from millstream.runtime import ConsumerState
from tests.support import until
from tests.web import Lifespan, bearer, client, memory_app, serving


async def test_fastapi_lifespan_starts_consumers_and_drains_them_on_shutdown() -> None:
    hub = MemoryHub()
    ms = memory_app(hub, drain_timeout=5)
    entered = asyncio.Event()
    release = asyncio.Event()

    @ms.consumer("payments", concurrency=2)
    async def settle_payment(event: dict[str, int]) -> None:
        entered.set()
        await release.wait()

    app = ms.fastapi()
    assert isinstance(app, FastAPI)
    lifespan = Lifespan(app)
    assert not ms.started
    await lifespan.startup()
    consumer = ms.consumers["settle_payment"]
    assert consumer.state is ConsumerState.RUNNING

    await ms.publish("payments", {"n": 1})
    await entered.wait()
    stopping = asyncio.ensure_future(lifespan.shutdown())
    await asyncio.sleep(0.2)
    assert not stopping.done(), "shutdown did not wait for the in-flight handler"
    assert consumer.state is ConsumerState.STOPPING
    release.set()
    await asyncio.wait_for(stopping, 5)

    assert consumer.state is ConsumerState.STOPPED
    assert consumer.stats.acked == 1
    assert hub.lag("payments", "settle_payment") == 0, "the ack was not flushed before exit"
    assert not ms.started


async def test_fastapi_takes_an_app_made_with_ms_lifespan() -> None:
    ms = memory_app()
    seen: list[int] = []

    @ms.consumer("t")
    async def record(event: dict[str, int]) -> None:
        seen.append(event["n"])

    mine = FastAPI(title="orders", lifespan=ms.lifespan)
    app = ms.fastapi(mine)
    assert app is mine
    async with serving(app) as http:
        assert (await http.get("/health/ready")).status_code == 200
        await ms.publish("t", {"n": 3})
        await until(lambda: seen == [3])
    assert app.title == "orders"


async def test_fastapi_given_an_app_without_lifespan_still_runs_the_consumers() -> None:
    ms = memory_app()
    seen: list[int] = []

    @ms.consumer("t")
    async def record(event: dict[str, int]) -> None:
        seen.append(event["n"])

    app = ms.fastapi(FastAPI())
    async with serving(app) as http:
        assert ms.consumers["record"].state is ConsumerState.RUNNING
        assert (await http.get("/health/ready")).status_code == 200
        await ms.publish("t", {"n": 4})
        await until(lambda: seen == [4])
    assert ms.consumers["record"].state is ConsumerState.STOPPED


async def test_fastapi_given_an_app_with_its_own_lifespan_runs_both() -> None:
    ms = memory_app()
    events: list[str] = []

    @ms.consumer("t")
    async def record(event: dict[str, int]) -> None: ...

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append(f"own up, consumers started: {ms.started}")
        yield {"pool": "db-pool"}
        events.append(f"own down, consumers started: {ms.started}")

    app = ms.fastapi(FastAPI(lifespan=own))

    @app.get("/pool")
    async def pool(request: Request) -> dict[str, str]:
        return {"pool": request.state.pool}

    async with serving(app) as http:
        assert ms.consumers["record"].state is ConsumerState.RUNNING
        assert (await http.get("/pool")).json() == {"pool": "db-pool"}
    # The consumers run inside the app's own lifespan: what it opens outlives them.
    assert events == ["own up, consumers started: False", "own down, consumers started: False"]
    assert not ms.started


async def test_user_composed_fastapi_app_with_lifespan_and_router() -> None:
    ms = memory_app(jwt_secret="a-test-secret-long-enough-for-hs256-keys")
    orders: dict[str, str] = {}

    @ms.consumer("payments")
    async def on_payment(event: dict[str, str]) -> None:
        orders[event["order"]] = "PAID"

    app = FastAPI(lifespan=ms.lifespan)
    app.include_router(ms.router)

    @app.get("/api/v1/orders/{order_id}")
    async def order(order_id: str) -> dict[str, str]:
        return {"id": order_id, "status": orders.get(order_id, "PENDING")}

    async with serving(app) as http:
        assert (await http.get("/api/v1/orders/o1")).json()["status"] == "PENDING"
        await ms.publish("payments", {"order": "o1"})
        await until(lambda: "o1" in orders)
        assert (await http.get("/api/v1/orders/o1")).json() == {"id": "o1", "status": "PAID"}
        assert (await http.get("/health/ready")).json() == {"status": "UP"}
        assert (await http.get("/admin/consumers")).status_code == 401
        listed = await http.get("/admin/consumers", headers=bearer())
        assert [c["name"] for c in listed.json()] == ["on_payment"]
        assert "millstream_messages_acked_total" in (await http.get("/metrics")).text


async def test_plain_starlette_app_with_lifespan_and_router() -> None:
    ms = memory_app()
    seen: list[int] = []

    @ms.consumer("t")
    async def record(event: dict[str, int]) -> None:
        seen.append(event["n"])

    async def count(request: Request) -> JSONResponse:
        return JSONResponse({"seen": len(seen)})

    app = Starlette(
        lifespan=ms.lifespan,
        routes=[Route("/count", count), Mount("/", app=ms.router)],
    )
    lifespan = Lifespan(app)
    async with client(app) as http:
        assert (await http.get("/health/ready")).status_code == 503  # not started yet
        await lifespan.startup()
        assert (await http.get("/health/ready")).status_code == 200
        await ms.publish("t", {"n": 1})
        await until(lambda: seen == [1])
        assert (await http.get("/count")).json() == {"seen": 1}
        actuator = (await http.get("/actuator/health")).json()
        assert actuator["components"]["consumers"]["components"]["record"]["status"] == "UP"
        assert (await http.get("/admin/consumers")).status_code == 401
        await lifespan.shutdown()
    assert ms.consumers["record"].state is ConsumerState.STOPPED


async def test_a_cpu_heavy_sync_handler_does_not_block_requests() -> None:
    ms = memory_app()
    busy = threading.Event()
    finished = threading.Event()

    @ms.consumer("crunch")
    def crunch(event: dict[str, float]) -> None:
        busy.set()
        deadline = time.perf_counter() + event["seconds"]
        total = 0
        while time.perf_counter() < deadline:  # pure Python: holds the GIL between switches
            total += sum(range(1000))
        finished.set()

    app = ms.fastapi()
    async with serving(app) as http:
        await ms.publish("crunch", {"seconds": 3.0})
        await until(busy.is_set)
        timings = []
        for _ in range(10):
            before = time.perf_counter()
            response = await http.get("/health/live")
            timings.append(time.perf_counter() - before)
            assert response.status_code == 200
        concurrent = await asyncio.gather(*(http.get("/health/live") for _ in range(20)))
        assert all(r.status_code == 200 for r in concurrent)
        # On the loop, the handler would hold every request for its 3 seconds.
        assert not finished.is_set(), "a request waited for the handler to finish"
        assert statistics.median(timings) < 0.05, timings
        assert max(timings) < 1.0, timings
        await until(finished.is_set)
        await until(lambda: ms.consumers["crunch"].stats.acked == 1)


async def test_requests_are_answered_while_a_consumer_drains_a_backlog() -> None:
    ms = memory_app()
    handled = 0

    @ms.consumer("t", concurrency=8)
    async def fast(event: dict[str, int]) -> None:
        nonlocal handled
        handled += 1

    app = ms.fastapi()
    async with serving(app) as http:
        await ms.publish_batch("t", [{"n": i} for i in range(100_000)])
        await until(lambda: handled > 1000)
        timings = []
        for _ in range(20):
            before = time.perf_counter()
            assert (await http.get("/health/live")).status_code == 200
            timings.append(time.perf_counter() - before)
        assert handled < 100_000, "the backlog was gone before the requests: nothing was shown"
        assert statistics.median(timings) < 0.05, timings
        assert max(timings) < 0.5, f"a request waited {max(timings):.3f}s behind the consumer"


def test_each_app_has_its_own_metrics_registry() -> None:
    first, second = memory_app(), memory_app()
    assert first.web.metrics.registry is not second.web.metrics.registry
    assert isinstance(first.fastapi(), FastAPI)
    assert isinstance(second.fastapi(), FastAPI)
    assert isinstance(httpx.ASGITransport(app=first.fastapi()), httpx.ASGITransport)
