"""The app's backpressure and controls: acks after handlers, max_inflight, pause, concurrency."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from millstream.brokers.memory.broker import MemoryBroker, MemoryHub
from millstream.runtime import ConsumerState
from tests.app.support import app
from tests.support import until


async def test_no_message_is_acked_before_its_handler_finishes() -> None:
    ms = app()
    release = asyncio.Event()
    entered = asyncio.Event()

    @ms.consumer("t", concurrency=2)
    async def slow(event: dict[str, int]) -> None:
        entered.set()
        await release.wait()

    async with ms:
        await ms.publish("t", {"n": 1})
        await entered.wait()
        await asyncio.sleep(0.05)  # several settle intervals
        consumer = ms.consumers["slow"]
        lag = await consumer.lag()
        assert lag is not None and lag.total == 1
        release.set()
        await until(lambda: consumer.stats.acked == 1)
        await until(lambda: consumer.inflight == 0)
        lag = await consumer.lag()
        assert lag is not None and lag.total == 0


async def test_fetching_stops_when_max_inflight_is_reached() -> None:
    ms = app()
    release = asyncio.Event()
    started = 0

    @ms.consumer("t", concurrency=50, max_inflight=10, prefetch=4)
    async def blocked(event: dict[str, int]) -> None:
        nonlocal started
        started += 1
        await release.wait()

    async with ms:
        await ms.publish_batch("t", [{"n": i} for i in range(100)])
        await until(lambda: started == 10)
        await asyncio.sleep(0.1)
        assert started == 10
        assert ms.consumers["blocked"].inflight == 10
        release.set()
        await until(lambda: ms.consumers["blocked"].stats.acked == 100)


async def test_pause_stops_fetching_and_resume_loses_nothing() -> None:
    ms = app(poll_timeout=0.05)
    handled: list[int] = []

    @ms.consumer("t", concurrency=4)
    async def handle(event: dict[str, int]) -> None:
        handled.append(event["n"])

    async with ms:
        consumer = ms.consumers["handle"]
        consumer.pause()
        await asyncio.sleep(0.1)  # let a fetch that was in progress return
        before = len(handled)
        await ms.publish_batch("t", [{"n": i} for i in range(200)])
        await asyncio.sleep(0.2)
        assert consumer.state is ConsumerState.PAUSED
        assert len(handled) == before == 0
        consumer.resume()
        assert consumer.state is ConsumerState.RUNNING
        await until(lambda: len(handled) == 200)

    assert sorted(handled) == list(range(200))


async def test_set_concurrency_while_consuming_handles_each_message_once() -> None:
    ms = app()
    counts: Counter[int] = Counter()
    active = 0
    peak: list[int] = []

    @ms.consumer("t", concurrency=2, max_inflight=64)
    async def handle(event: dict[str, int]) -> None:
        nonlocal active
        active += 1
        peak.append(active)
        await asyncio.sleep(0.002)
        counts[event["n"]] += 1
        active -= 1

    async with ms:
        consumer = ms.consumers["handle"]
        await ms.publish_batch("t", [{"n": i} for i in range(1500)])
        await until(lambda: len(counts) >= 200)
        assert max(peak) <= 2
        consumer.set_concurrency(16)
        peak.clear()
        await until(lambda: len(counts) >= 800)
        assert max(peak) > 2
        consumer.set_concurrency(1)
        await asyncio.sleep(0.05)  # retired workers finish what they hold
        peak.clear()
        await until(lambda: len(counts) >= 1500)
        assert max(peak) == 1

    assert set(counts) == set(range(1500))
    assert set(counts.values()) == {1}


async def test_handlers_that_never_suspend_still_let_the_event_loop_run() -> None:
    """A burst of CPU-bound async handlers must not starve HTTP and heartbeats."""
    ms = app(prefetch=4000, max_inflight=4000)
    burst = 4000  # 0.1 ms each: 0.4 s if one worker ran them all without yielding

    @ms.consumer("t", concurrency=1)
    async def busy(event: dict[str, int]) -> None:
        end = time.perf_counter() + 0.0001
        while time.perf_counter() < end:
            pass

    await ms.broker.connect()
    await ms.publish_batch("t", [{"n": n} for n in range(burst)])
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    async with ms:
        await until(lambda: ms.consumers["busy"].stats.acked == burst, within=30)
    ticker.cancel()
    assert max(gaps) < 0.1, f"the loop was blocked for {max(gaps):.3f}s"


async def test_a_slow_handler_keeps_its_messages_past_the_lease_while_the_loop_is_full() -> None:
    hub = MemoryHub(lease=0.8)
    ms = app(hub)
    other = MemoryBroker(hub)
    await other.connect()
    handled: list[int] = []

    @ms.consumer("t", concurrency=2, max_inflight=2)
    async def slow(event: dict[str, int]) -> None:
        await asyncio.sleep(2.0)
        handled.append(event["n"])

    async with ms:
        rival = await other.subscribe("t", "slow", prefetch=8)
        await ms.publish_batch("t", [{"n": 1}, {"n": 2}])
        await until(lambda: ms.consumers["slow"].inflight == 2)
        stolen = await rival.fetch(8, timeout=1.6)
        assert stolen == [], "a live member's messages were handed to another"
        await until(lambda: len(handled) == 2)
