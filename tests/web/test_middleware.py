"""Middleware: rate limits, body limits, the request log, and versioned route groups."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from millstream import Millstream
from millstream.web import api_group
from millstream.web.middleware.rate_limit import TokenBuckets
from tests.web import SECRET, Lifespan, bearer, client, memory_app, serving


class Order(BaseModel):
    item: str
    quantity: int


def orders_app(ms: Millstream) -> FastAPI:
    """An order API in two versions beside the service routes."""
    app = ms.fastapi()
    v1 = api_group(ms, 1, tags=["orders"])
    v2 = api_group(ms, 2, auth=True)
    received: list[Order] = []

    @v1.get("/orders/{order_id}")
    async def order(order_id: str) -> dict[str, str]:
        return {"id": order_id, "version": "1"}

    @v1.post("/orders", status_code=201)
    async def create(order: Order) -> dict[str, int]:
        received.append(order)
        return {"received": len(received)}

    @v1.get("/boom")
    async def boom() -> None:
        raise RuntimeError("the handler broke")

    @v2.get("/orders/{order_id}")
    async def order_v2(order_id: str) -> dict[str, str]:
        return {"id": order_id, "version": "2"}

    app.include_router(v1)
    app.include_router(v2)
    app.state.received = received
    return app


async def test_versioned_groups_live_under_api_v_n() -> None:
    ms = memory_app(jwt_secret=SECRET)
    app = orders_app(ms)
    async with serving(app) as http:
        assert (await http.get("/api/v1/orders/9")).json() == {"id": "9", "version": "1"}
        assert (await http.get("/api/v2/orders/9")).status_code == 401
        v2 = await http.get("/api/v2/orders/9", headers=bearer())
        assert v2.json() == {"id": "9", "version": "2"}
        assert (await http.get("/orders/9")).status_code == 404
        paths = (await http.get("/openapi.json")).json()["paths"]
        assert {"/api/v1/orders/{order_id}", "/api/v2/orders/{order_id}"} <= set(paths)
        # What the middleware and the auth may answer is documented with each route.
        v1_responses = paths["/api/v1/orders/{order_id}"]["get"]["responses"]
        v2_responses = paths["/api/v2/orders/{order_id}"]["get"]["responses"]
        assert "413" in v1_responses and "401" not in v1_responses
        assert {"401", "413"} <= set(v2_responses)
        assert {"401", "413"} <= set(paths["/admin/consumers"]["get"]["responses"])


async def test_rate_limit_answers_429_with_retry_after_per_client() -> None:
    ms = memory_app(rate_limit=20, rate_limit_burst=3)
    app = orders_app(ms)
    lifespan = Lifespan(app)
    await lifespan.startup()
    try:
        async with client(app, "10.0.0.1") as first, client(app, "10.0.0.2") as second:
            statuses = [(await first.get("/api/v1/orders/1")).status_code for _ in range(3)]
            assert statuses == [200, 200, 200]
            limited = await first.get("/api/v1/orders/1")
            assert limited.status_code == 429
            assert limited.headers["retry-after"] == "1"
            assert "too many requests" in limited.json()["detail"]
            assert (await first.get("/admin/consumers")).status_code == 429  # admin is limited

            # Another client has its own bucket; probes and scrapes are never limited.
            assert (await second.get("/api/v1/orders/1")).status_code == 200
            for _ in range(10):
                assert (await first.get("/health/ready")).status_code == 200
                assert (await first.get("/metrics")).status_code == 200

            await asyncio.sleep(0.1)  # 20 a second: two tokens back
            assert (await first.get("/api/v1/orders/1")).status_code == 200
    finally:
        await lifespan.shutdown()


def test_token_bucket_refills_at_the_rate_and_caps_at_the_burst() -> None:
    buckets = TokenBuckets(rate=2, burst=2)
    assert buckets.take("a", now=0.0) == 0
    assert buckets.take("a", now=0.0) == 0
    assert buckets.take("a", now=0.0) == pytest.approx(0.5)
    assert buckets.take("a", now=0.5) == 0  # one token came back
    assert buckets.take("a", now=100.0) == 0
    assert buckets.take("a", now=100.0) == 0
    assert buckets.take("a", now=100.0) > 0  # a long pause saves up no more than the burst
    assert buckets.take("b", now=100.0) == 0


def test_token_buckets_forget_the_oldest_client_past_the_bound() -> None:
    buckets = TokenBuckets(rate=1, burst=1, max_clients=2)
    for client_id in ("a", "b", "c"):
        assert buckets.take(client_id, now=0.0) == 0
    assert buckets.take("a", now=0.0) == 0  # forgotten, so a full bucket again
    assert buckets.take("c", now=0.0) > 0


async def test_oversized_body_with_content_length_is_413_before_the_handler_runs() -> None:
    ms = memory_app(max_body_bytes=1000)
    app = orders_app(ms)
    async with serving(app) as http:
        small = await http.post("/api/v1/orders", json={"item": "tea", "quantity": 1})
        assert small.status_code == 201
        big = await http.post("/api/v1/orders", json={"item": "x" * 2000, "quantity": 1})
        assert big.status_code == 413
        assert big.json() == {"detail": "request body larger than 1000 bytes"}
        assert len(app.state.received) == 1


async def test_oversized_streamed_body_without_content_length_is_413() -> None:
    ms = memory_app(max_body_bytes=1000)
    app = orders_app(ms)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"item": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'", "quantity": 1}'

    async with serving(app) as http:
        response = await http.post(
            "/api/v1/orders", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413
        assert "larger than 1000 bytes" in response.json()["detail"]
        assert app.state.received == []

        async def few() -> AsyncIterator[bytes]:
            yield b'{"item": "tea",'
            yield b' "quantity": 2}'

        fine = await http.post(
            "/api/v1/orders", content=few(), headers={"content-type": "application/json"}
        )
        assert fine.status_code == 201


async def test_request_log_line_has_method_route_template_status_duration_and_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = orders_app(memory_app())
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    async with serving(app) as http:
        caplog.clear()
        await http.get(
            "/api/v1/orders/42",
            headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
        )
        await http.get("/api/v1/orders/43")
        await http.get("/health/live")
        await http.post("/api/v1/orders", json={"item": "tea"})

    lines = [r for r in caplog.records if r.name == "millstream.http"]
    assert len(lines) == 3, [r.getMessage() for r in lines]  # probes are not logged
    traced, untraced, invalid = lines
    assert traced.levelno == logging.INFO
    message = traced.getMessage()
    assert message.startswith("GET /api/v1/orders/{order_id} 200 ")
    assert message.endswith(f"ms trace={trace_id}")
    fields: dict[str, Any] = traced.__dict__
    assert fields["http_method"] == "GET"
    assert fields["http_route"] == "/api/v1/orders/{order_id}"
    assert fields["http_status"] == 200
    assert 0 <= fields["duration_ms"] < 1000
    assert fields["trace_id"] == trace_id
    assert untraced.getMessage().endswith("trace=-")
    assert untraced.__dict__["trace_id"] is None
    assert invalid.getMessage().startswith("POST /api/v1/orders 422 ")


async def test_request_log_takes_the_trace_id_of_a_surrounding_server_span(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    seen: list[str] = []
    inner = orders_app(memory_app())

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        with tracer.start_as_current_span("GET") as span:
            seen.append(format(span.get_span_context().trace_id, "032x"))
            await inner(scope, receive, send)

    app: ASGIApp = traced
    lifespan = Lifespan(app)
    await lifespan.startup()
    async with client(app) as http:
        caplog.clear()
        await http.get("/api/v1/orders/1")
    await lifespan.shutdown()
    line = next(r for r in caplog.records if r.name == "millstream.http")
    assert line.__dict__["trace_id"] == seen[0]


async def test_a_server_error_is_logged_at_error_with_its_route(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = orders_app(memory_app())
    lifespan = Lifespan(app)
    await lifespan.startup()
    async with client(app) as http:
        caplog.clear()
        with pytest.raises(RuntimeError, match="the handler broke"):  # httpx re-raises app errors
            await http.get("/api/v1/boom")
    await lifespan.shutdown()
    line = next(r for r in caplog.records if r.name == "millstream.http")
    assert line.levelno == logging.ERROR
    assert line.getMessage().startswith("GET /api/v1/boom 500 ")
