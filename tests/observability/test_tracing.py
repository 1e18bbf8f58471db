"""Traces cross the broker: publish → PRODUCER span → headers → CONSUMER span, on the memory broker.

Spans go to an in-memory exporter on a private provider handed to the app
(``tracer_provider=``); the global tracer provider is never set, and the
global propagator is the default W3C one.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from millstream import BrokerUnavailable, Message, Millstream, Retry
from millstream.brokers.memory.broker import MemoryBroker
from millstream.observability import tracing
from tests.support import until

UPSTREAM_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UPSTREAM_PARENT = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def spans_named(
    exporter: InMemorySpanExporter, name: str, count: int = 1
) -> Sequence[ReadableSpan]:
    """The finished spans called ``name``, once there are ``count`` of them."""
    await until(lambda: len(named(exporter, name)) >= count)
    return named(exporter, name)


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_the_consumer_span_is_a_child_of_the_producer_span_in_the_publishers_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ms = Millstream("memory://", tracer_provider=provider)
    received: list[Message] = []

    @ms.consumer("orders", group="billing")
    async def handle(order: dict[str, int], msg: Message) -> None:
        received.append(msg)

    async with ms:
        with provider.get_tracer("test").start_as_current_span("checkout") as checkout:
            message_id = await ms.publish("orders", {"n": 1}, key="order-1")
        (process,) = await spans_named(exporter, "process orders")

    (send,) = named(exporter, "send orders")
    trace_id, send_id = ids(send)
    assert trace_id == checkout.get_span_context().trace_id
    assert parent_id(send) == checkout.get_span_context().span_id
    version, carried_trace, carried_parent, _flags = received[0].headers["traceparent"].split("-")
    assert (version, carried_trace, carried_parent) == ("00", f"{trace_id:032x}", f"{send_id:016x}")

    assert send.kind is SpanKind.PRODUCER
    assert dict(send.attributes or {}) == {
        "messaging.system": "memory",
        "messaging.destination.name": "orders",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.message.id": message_id,
        "messaging.message.body.size": len(b'{"n":1}'),
        "millstream.message.key": "order-1",
    }

    assert process.kind is SpanKind.CONSUMER
    assert ids(process)[0] == trace_id
    assert parent_id(process) == send_id
    assert process.status.status_code is StatusCode.UNSET
    assert dict(process.attributes or {}) == {
        "messaging.system": "memory",
        "messaging.destination.name": "orders",
        "messaging.consumer.group.name": "billing",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": message_id,
        "messaging.message.body.size": len(b'{"n":1}'),
        "millstream.message.key": "order-1",
        "millstream.message.attempt": 1,
    }


async def test_a_batch_is_one_producer_span_whose_context_every_message_carries(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ms = Millstream("memory://", tracer_provider=provider)

    @ms.consumer("orders")
    async def handle(order: dict[str, int]) -> None:
        pass

    async with ms:
        await ms.publish_batch("orders", [{"n": i} for i in range(3)])
        processed = await spans_named(exporter, "process orders", count=3)

    (send,) = named(exporter, "send orders")
    attributes = dict(send.attributes or {})
    assert attributes["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in attributes
    assert {(ids(span)[0], parent_id(span)) for span in processed} == {ids(send)}


async def test_an_http_request_that_publishes_and_the_consumer_share_one_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ms = Millstream("memory://", tracer_provider=provider)
    handled: list[str] = []

    @ms.consumer("orders")
    async def handle(order: dict[str, str]) -> None:
        handled.append(order["id"])

    api = FastAPI()

    @api.post("/orders/{order_id}", status_code=202)
    async def create(order_id: str) -> dict[str, str]:
        await ms.publish("orders", {"id": order_id}, key=order_id)
        return {"id": order_id}

    app = OpenTelemetryMiddleware(api, tracer_provider=provider)
    transport = httpx.ASGITransport(app=app)
    async with ms, httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.post("/orders/o-7")
        (process,) = await spans_named(exporter, "process orders")

    assert response.status_code == 202
    assert handled == ["o-7"]
    (server,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    (send,) = named(exporter, "send orders")
    assert server.parent is None  # the request came without a trace: it starts one
    assert ids(send)[0] == ids(process)[0] == ids(server)[0]
    assert parent_id(send) == ids(server)[1]
    assert parent_id(process) == ids(send)[1]


async def test_a_trace_started_upstream_reaches_the_consumer_through_http_and_the_broker(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ms = Millstream("memory://", tracer_provider=provider)

    @ms.consumer("orders")
    async def handle(order: dict[str, str]) -> None:
        pass

    api = FastAPI()

    @api.post("/orders")
    async def create() -> None:
        await ms.publish("orders", {"id": "o-8"})

    transport = httpx.ASGITransport(app=OpenTelemetryMiddleware(api, tracer_provider=provider))
    upstream = {"traceparent": f"00-{UPSTREAM_TRACE}-{UPSTREAM_PARENT}-01"}
    async with ms, httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        await client.post("/orders", headers=upstream)
        (process,) = await spans_named(exporter, "process orders")

    assert f"{ids(process)[0]:032x}" == UPSTREAM_TRACE


async def test_a_failing_handler_has_an_error_span_and_is_still_retried(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ms = Millstream("memory://", tracer_provider=provider)

    @ms.consumer("orders", retry=Retry(attempts=3, backoff=0.01, jitter=0))
    async def flaky(order: dict[str, int], msg: Message) -> None:
        if msg.attempt == 1:
            raise RuntimeError("card processor timed out")

    async with ms:
        await ms.publish("orders", {"n": 1})
        first, second = await spans_named(exporter, "process orders", count=2)
        stats = ms.consumers["flaky"].stats
        await until(lambda: stats.acked == 1)

    assert (stats.retried, stats.acked) == (1, 1)
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "RuntimeError: card processor timed out"
    assert first.attributes is not None
    assert first.attributes["error.type"] == "RuntimeError"
    assert first.attributes["millstream.message.attempt"] == 1
    (event,) = first.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "RuntimeError"
    assert event.attributes["exception.message"] == "card processor timed out"

    assert second.status.status_code is StatusCode.UNSET
    assert second.attributes is not None
    assert second.attributes["millstream.message.attempt"] == 2
    (send,) = named(exporter, "send orders")
    assert parent_id(first) == parent_id(second) == ids(send)[1]


async def test_a_message_published_by_a_handler_continues_the_handlers_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ms = Millstream("memory://", tracer_provider=provider)

    @ms.consumer("orders")
    async def bill(order: dict[str, int]) -> None:
        await ms.publish("invoices", order)

    @ms.consumer("invoices")
    async def mail(invoice: dict[str, int]) -> None:
        pass

    async with ms:
        await ms.publish("orders", {"n": 1})
        (mailed,) = await spans_named(exporter, "process invoices")

    (billed,) = named(exporter, "process orders")
    (invoice_sent,) = named(exporter, "send invoices")
    assert parent_id(invoice_sent) == ids(billed)[1]
    assert parent_id(mailed) == ids(invoice_sent)[1]
    assert ids(mailed)[0] == ids(billed)[0]


async def test_a_failed_publish_has_an_error_span_and_raises(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    broker = MemoryBroker()
    ms = Millstream(broker=broker, tracer_provider=provider)

    async with ms:
        broker.cut()  # the connection drops under the publisher
        with pytest.raises(BrokerUnavailable):
            await ms.publish("orders", {"n": 1})

    (send,) = named(exporter, "send orders")
    assert send.status.status_code is StatusCode.ERROR
    assert [event.name for event in send.events] == ["exception"]


async def test_without_an_sdk_the_context_still_flows_through_a_handler() -> None:
    ms = Millstream("memory://")  # the global provider: the API's no-op unless an SDK is set
    downstream: list[Message] = []

    @ms.consumer("orders")
    async def bill(order: dict[str, int]) -> None:
        await ms.publish("invoices", order)

    @ms.consumer("invoices")
    async def mail(invoice: dict[str, int], msg: Message) -> None:
        downstream.append(msg)

    upstream = {"traceparent": f"00-{UPSTREAM_TRACE}-{UPSTREAM_PARENT}-01"}
    async with ms:
        await ms.publish("orders", {"n": 1}, headers=upstream)
        await until(lambda: len(downstream) == 1)

    assert downstream[0].headers["traceparent"].split("-")[1] == UPSTREAM_TRACE


@pytest.mark.parametrize(
    ("url", "system"),
    [
        ("memory://", "memory"),
        ("sqlite:///./.millstream/broker.db", "sqlite"),
        ("redis://127.0.0.1:6379", "redis"),
        ("rediss://127.0.0.1:6380", "redis"),
        ("amqp://guest:guest@127.0.0.1:5672/", "rabbitmq"),
        ("nats://127.0.0.1:4222", "nats"),
        ("kafka://127.0.0.1:9092", "kafka"),
    ],
)
def test_messaging_system_is_named_by_the_broker_url(url: str, system: str) -> None:
    assert tracing.messaging_system(url) == system


async def test_a_sync_handler_runs_inside_the_consumer_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    ms = Millstream("memory://", tracer_provider=provider)
    current: list[int] = []

    @ms.consumer("orders")
    def handle(order: dict[str, int]) -> None:
        current.append(trace.get_current_span().get_span_context().span_id)

    async with ms:
        await ms.publish("orders", {"n": 1})
        (process,) = await spans_named(exporter, "process orders")

    assert current == [ids(process)[1]]
