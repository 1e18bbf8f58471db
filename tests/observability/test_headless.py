"""A service run without HTTP still traces and measures: the app installs both, whatever face."""

from __future__ import annotations

import subprocess
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from millstream import Message, Millstream
from millstream.runtime.handler import Invoke
from millstream.runtime.spec import ConsumerSpec
from tests.support import until


def traced() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return None


async def test_a_headless_service_exports_spans_and_metrics() -> None:
    provider, exporter = traced()
    ms = Millstream("memory://", tracer_provider=provider)
    handled: list[int] = []

    @ms.consumer("orders", group="billing")
    async def handle(order: dict[str, int]) -> None:
        handled.append(order["n"])

    async with ms:
        await ms.publish("orders", {"n": 1})
        await until(lambda: len(spans(exporter, "process orders")) == 1)
        await until(lambda: ms.consumers["handle"].stats.acked == 1)
        scrape = ms.metrics.render().decode()

    assert handled == [1]
    assert len(spans(exporter, "send orders")) == 1
    labels = {"consumer": "handle", "topic": "orders"}
    assert sample(scrape, "millstream_handler_duration_seconds_count", **labels) == 1.0
    assert sample(scrape, "millstream_messages_acked_total", **labels, group="billing") == 1.0
    assert sample(scrape, "millstream_published_messages_total", topic="orders") == 1.0


async def test_tracing_is_outermost_and_the_duration_counts_the_whole_chain() -> None:
    provider, exporter = traced()
    ms = Millstream("memory://", tracer_provider=provider)
    seen: list[tuple[bool, float | None]] = []

    def spy(consumer: ConsumerSpec, inner: Invoke) -> Invoke:
        async def invoke(message: Message) -> None:
            # Inside the span; the duration is recorded once the whole chain returned.
            scrape = ms.metrics.render().decode()
            before = sample(scrape, "millstream_handler_duration_seconds_count")
            seen.append((trace.get_current_span().is_recording(), before))
            await inner(message)

        return invoke

    ms.add_link(spy)

    @ms.consumer("orders")
    async def handle(order: dict[str, int]) -> None:
        pass

    async with ms:
        await ms.publish("orders", {"n": 1})
        await until(lambda: len(spans(exporter, "process orders")) == 1)

    assert seen == [(True, 0.0)]


async def test_the_http_face_adds_no_second_span_or_metric() -> None:
    provider, exporter = traced()
    ms = Millstream("memory://", tracer_provider=provider)

    @ms.consumer("orders")
    async def handle(order: dict[str, int]) -> None:
        pass

    ms.fastapi()  # the HTTP face reads the app's instruments; it adds none
    async with ms:
        await ms.publish_batch("orders", [{"n": 1}, {"n": 2}])
        await until(lambda: len(spans(exporter, "process orders")) == 2)

    assert len(spans(exporter, "send orders")) == 1
    assert ms.web.metrics is ms.metrics


def test_a_headless_service_does_not_import_the_web_layer() -> None:
    code = (
        "import sys\n"
        "from millstream import Millstream\n"
        "ms = Millstream('memory://')\n"
        "assert ms.metrics is not None\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette'))\n"
        "assert 'millstream.web' not in sys.modules and not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
