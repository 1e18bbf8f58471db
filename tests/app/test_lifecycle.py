"""The app's start and stop: configuration refused, draining, releasing, the heap, the state."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import pytest

from millstream import ConfigError, Message, Millstream
from millstream.brokers.memory.broker import MemoryBroker, MemoryHub, MemorySubscription
from millstream.cache import LocalBus
from millstream.errors import StoreError
from millstream.runtime import ConsumerState
from millstream.store.outbox import OutboxRelay
from millstream.store.sqlite import SqliteStore
from tests.app.support import app
from tests.support import until


def test_bad_configuration_fails_at_construction_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"'kafak://x'.*unsupported scheme 'kafak'"):
        Millstream("kafak://x")
    with pytest.raises(ConfigError, match="prefetch"):
        Millstream("memory://", prefetch=0)
    ms = app()
    with pytest.raises(ConfigError, match="concurrency=0"):

        @ms.consumer("t", concurrency=0)
        async def handle(event: dict[str, int]) -> None: ...


async def test_stop_drains_in_flight_handlers_and_flushes_their_acks() -> None:
    hub = MemoryHub()
    ms = app(hub)
    done: list[int] = []

    @ms.consumer("t", concurrency=8)
    async def handle(event: dict[str, int]) -> None:
        await asyncio.sleep(0.2)
        done.append(event["n"])

    await ms.start()
    await ms.publish_batch("t", [{"n": i} for i in range(8)])
    await until(lambda: ms.consumers["handle"].inflight == 8)
    await ms.stop()

    assert sorted(done) == list(range(8))
    assert hub.lag("t", "handle") == 0


async def test_stop_releases_what_outlives_the_drain_timeout_without_counting_it() -> None:
    hub = MemoryHub()
    ms = app(hub, drain_timeout=0.2)

    @ms.consumer("t", concurrency=1)
    async def stuck(event: dict[str, int]) -> None:
        await asyncio.sleep(60)

    await ms.start()
    await ms.publish_batch("t", [{"n": 1}, {"n": 2}])
    await until(lambda: ms.consumers["stuck"].inflight == 2)
    started = time.monotonic()
    await ms.stop()
    assert time.monotonic() - started < 2

    broker = MemoryBroker(hub)
    await broker.connect()
    sub = await broker.subscribe("t", "stuck", prefetch=8)
    again = await sub.fetch(8, timeout=1)
    assert [m.payload for m in again] == [b'{"n":1}', b'{"n":2}']
    assert [m.attempt for m in again] == [1, 1]


async def test_a_cancelled_stop_still_releases_what_it_held() -> None:
    hub = MemoryHub()
    ms = app(hub)
    finished: list[int] = []

    @ms.consumer("t", concurrency=2)
    async def slow(event: dict[str, int]) -> None:
        await asyncio.sleep(5)
        finished.append(event["n"])

    await ms.start()
    await ms.publish_batch("t", [{"n": i} for i in range(4)])
    await until(lambda: ms.consumers["slow"].inflight == 4)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await ms.consumers["slow"].stop()
    await asyncio.sleep(0.1)
    assert finished == []
    assert [t.get_name() for t in asyncio.all_tasks() if "millstream:slow" in t.get_name()] == []
    other = MemoryBroker(hub)
    await other.connect()
    sub = await other.subscribe("t", "slow", prefetch=8)
    assert len(await sub.fetch(8, timeout=1)) == 4
    await ms.stop()


async def test_stop_ends_a_fetch_loop_whose_cancellation_was_lost_below(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # redis-py sends each command through asyncio.wait_for, which on Python 3.11
    # returns a result that arrives with the cancellation and drops the
    # cancellation (bpo-42130): the fetch loop must not then run on forever.
    hub = MemoryHub()
    ms = app(hub, poll_timeout=0.05)
    lost: list[int] = []
    fetch = MemorySubscription.fetch

    async def loses_a_cancellation(
        self: MemorySubscription, max_messages: int, timeout: float
    ) -> list[Message]:
        try:
            return await fetch(self, max_messages, timeout)
        except asyncio.CancelledError:
            if lost:
                raise
            lost.append(1)
            return []

    @ms.consumer("t")
    async def handle(event: dict[str, int]) -> None:
        pass

    monkeypatch.setattr(MemorySubscription, "fetch", loses_a_cancellation)
    await ms.start()
    async with asyncio.timeout(5):
        await ms.stop()
    assert lost == [1]
    assert ms.consumers["handle"].state is ConsumerState.STOPPED
    assert [t.get_name() for t in asyncio.all_tasks() if "millstream:handle" in t.get_name()] == []


async def test_the_heap_alive_at_start_is_hidden_from_the_collector_until_the_last_stop() -> None:
    assert gc.get_freeze_count() == 0
    first, second, unfrozen = app(), app(), app(gc_freeze=False)
    async with unfrozen:
        assert gc.get_freeze_count() == 0
    await first.start()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    await second.start()
    await first.stop()
    assert gc.get_freeze_count() >= frozen  # the second app still runs
    await second.stop()
    assert gc.get_freeze_count() == 0


async def test_the_state_opens_bus_store_relay_and_closes_relay_store_bus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []

    def spy(cls: type, name: str) -> None:
        original = getattr(cls, name)

        def recorded(self: object, *args: object, **kwargs: object) -> object:
            events.append(f"{cls.__name__}.{name}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, recorded)

    for cls, names in (
        (LocalBus, ("start", "close")),
        (SqliteStore, ("open", "close")),
        (OutboxRelay, ("start", "stop")),
    ):
        for name in names:
            spy(cls, name)
    ms = app(store_url=f"sqlite:///{tmp_path}/state.db")
    ms.cache("orders")
    ms.store.schema("CREATE TABLE IF NOT EXISTS seen (id TEXT)")

    async with ms:
        assert events == ["LocalBus.start", "SqliteStore.open", "OutboxRelay.start"]
        assert ms.relay is not None and ms.opened_store is ms.store
        events.clear()
    # The relay's flush queries the store, and every query calls the idempotent open().
    closing = [event for event in events if event != "SqliteStore.open"]
    assert closing == ["OutboxRelay.stop", "SqliteStore.close", "LocalBus.close"]
    assert ms.relay is None


async def test_a_store_that_fails_to_open_closes_the_state_and_fails_the_start(
    tmp_path: Path,
) -> None:
    ms = app(store_url=f"sqlite:///{tmp_path}/state.db")
    ms.store.schema("CREATE TABLE broken (")

    with pytest.raises(StoreError):
        await ms.start()
    assert not ms.started and ms.relay is None and not ms.store.is_open
