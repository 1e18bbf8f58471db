"""The seams a test harness runs an app through: ``running_on`` and links taken out again."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from millstream import ConfigError, Message, Millstream, OutgoingMessage, Transaction
from millstream.brokers.memory.broker import MemoryBroker
from millstream.runtime.chains import Publish
from millstream.runtime.handler import Invoke
from millstream.runtime.spec import ConsumerSpec
from tests.support import until


async def test_running_on_swaps_broker_and_store_and_puts_them_back(tmp_path: Path) -> None:
    ms = Millstream("memory://", store_url=f"sqlite:///{tmp_path}/own.db", prefetch=8)
    ms.store.schema("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY)")
    broker, store, settings = ms.broker, ms.store, ms.settings

    @ms.consumer("in", group="g")
    async def handle(event: dict[str, str], tx: Transaction) -> None:
        await tx.execute("INSERT INTO seen (id) VALUES ($1)", event["id"])

    test_broker = MemoryBroker(url="memory://?lease=9")
    with ms.running_on(test_broker, store_url=f"sqlite:///{tmp_path}/test.db"):
        assert ms.broker is test_broker and ms.store is not store
        assert ms.settings.broker_url == "memory://?lease=9" and ms.settings.prefetch == 8
        async with ms:
            await ms.publish("in", {"id": "a"})
            await until(lambda: ms.consumers["handle"].stats.acked == 1)
            # The test store has the app's schema, and the consumer's transactions use it.
            assert await ms.store.fetchval("SELECT id FROM seen") == "a"
    assert (ms.broker, ms.store, ms.settings) == (broker, store, settings)
    assert (tmp_path / "test.db").exists() and not (tmp_path / "own.db").exists()


async def test_running_on_refuses_a_started_app_and_unknown_settings() -> None:
    ms = Millstream("memory://")
    with (
        pytest.raises(ConfigError, match=r"unknown setting\(s\) no_such_setting"),
        ms.running_on(MemoryBroker(), no_such_setting=1),
    ):
        pass
    async with ms:
        with (
            pytest.raises(ConfigError, match=r"running_on\(\) was called on a started app"),
            ms.running_on(MemoryBroker()),
        ):
            pass
    with (
        pytest.raises(ConfigError, match=r"still started on memory://.*stop\(\) it"),
        ms.running_on(MemoryBroker()),
    ):
        await ms.start()
    await ms.stop()


async def test_an_innermost_link_runs_in_the_transaction_and_not_for_ledger_duplicates(
    tmp_path: Path,
) -> None:
    ms = Millstream("memory://", store_url=f"sqlite:///{tmp_path}/state.db")
    seen: list[str] = []

    def outer(consumer: ConsumerSpec, inner: Invoke) -> Invoke:
        async def invoke(message: Message) -> None:
            seen.append("outer")
            await inner(message)

        return invoke

    def innermost(consumer: ConsumerSpec, inner: Invoke) -> Invoke:
        async def invoke(message: Message) -> None:
            in_tx = isinstance(Transaction.current(), Transaction)  # raises outside one
            seen.append(f"innermost, in a transaction: {in_tx}")
            await inner(message)

        return invoke

    @ms.consumer("in", group="g", idempotent=True)
    async def handle(event: dict[str, int]) -> None:
        seen.append("handler")

    ms.add_link(innermost, innermost=True)
    ms.add_link(outer)
    async with ms:
        await ms.publish_batch("in", [_same_id(), _same_id()])
        await until(lambda: ms.consumers["handle"].stats.acked == 2)
    assert seen[:3] == ["outer", "innermost, in a transaction: True", "handler"]
    assert seen[3:] == ["outer"]  # the duplicate: the ledger acked it before the handler


async def test_links_taken_out_no_longer_run() -> None:
    ms = Millstream("memory://")
    seen: list[str] = []

    def handler_link(consumer: ConsumerSpec, inner: Invoke) -> Invoke:
        async def invoke(message: Message) -> None:
            seen.append("handled")
            await inner(message)

        return invoke

    def publish_link(inner: Publish) -> Publish:
        async def send(topic: str, messages: Sequence[OutgoingMessage]) -> None:
            seen.append("published")
            await inner(topic, messages)

        return send

    @ms.consumer("in", group="g")
    async def handle(event: dict[str, int]) -> None:
        pass

    ms.add_link(handler_link)
    ms.add_publish_link(publish_link)
    ms.remove_link(handler_link)
    ms.remove_publish_link(publish_link)
    with pytest.raises(ValueError, match="never added"):
        ms.remove_link(handler_link)
    async with ms:
        await ms.publish("in", {"n": 1})
        await until(lambda: ms.consumers["handle"].stats.acked == 1)
    assert seen == []


def _same_id() -> OutgoingMessage:
    return OutgoingMessage(b'{"n": 1}', id="one-message")


async def test_spans_name_the_broker_the_app_runs_on(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ms = Millstream(f"sqlite:///{tmp_path}/broker.db", tracer_provider=provider)

    @ms.consumer("in", group="g")
    async def handle(event: dict[str, int]) -> None:
        pass

    with ms.running_on(MemoryBroker()):
        async with ms:
            await ms.publish("in", {"n": 1})
            await until(lambda: ms.consumers["handle"].stats.acked == 1)
    spans = exporter.get_finished_spans()
    systems = {span.name: (span.attributes or {}).get("messaging.system") for span in spans}
    assert systems == {"send in": "memory", "process in": "memory"}
