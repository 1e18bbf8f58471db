"""The runtime's promises, on the memory broker: backpressure, controls, stop, failure."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from pydantic import BaseModel

from millstream import AuthenticationError, ConfigError, FatalError, Message, Millstream, Retry
from millstream.brokers.memory.broker import MemoryBroker, MemoryHub, MemorySubscription
from millstream.cache import LocalBus
from millstream.errors import BrokerUnavailable, StoreError
from millstream.message import OutgoingMessage
from millstream.runtime import ConsumerState
from millstream.store.outbox import OutboxRelay
from millstream.store.sqlite import SqliteStore
from tests.support import until, until_equal


def app(hub: MemoryHub | None = None, **settings: object) -> Millstream:
    return Millstream(broker=MemoryBroker(hub or MemoryHub()), **settings)


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


async def test_handler_timeout_counts_as_a_failure_and_retries() -> None:
    ms = app()
    attempts: list[int] = []

    @ms.consumer("t", timeout=0.05, retry=Retry(attempts=3, backoff=0.01, jitter=0))
    async def handle(event: dict[str, int], msg: Message) -> None:
        attempts.append(msg.attempt)
        if msg.attempt == 1:
            await asyncio.sleep(10)

    async with ms:
        await ms.publish("t", {"n": 1})
        await until(lambda: ms.consumers["handle"].stats.acked == 1)

    assert attempts == [1, 2]
    consumer = ms.consumers["handle"]
    assert consumer.state is ConsumerState.STOPPED
    assert (consumer.stats.retried, consumer.stats.acked) == (1, 1)


class RefusingBroker(MemoryBroker):
    """A memory broker whose server refuses this client, for the supervisor's sake."""

    def __init__(self, error: Exception, failures: int) -> None:
        super().__init__(MemoryHub())
        self.error = error
        self.failures = failures
        self.subscribe_calls = 0

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> MemorySubscription:
        self.subscribe_calls += 1
        if self.subscribe_calls <= self.failures:
            raise self.error
        return await super().subscribe(topic, group, prefetch=prefetch, member=member)


async def test_authentication_failure_stops_the_consumer_without_retrying() -> None:
    broker = RefusingBroker(AuthenticationError("bad password for user 'orders'"), failures=99)
    ms = Millstream(broker=broker, reconnect_backoff=0.01)

    @ms.consumer("t")
    async def handle(event: dict[str, int]) -> None: ...

    async with ms:
        consumer = ms.consumers["handle"]
        await asyncio.sleep(0.3)
        assert consumer.state is ConsumerState.FAILED
        assert consumer.stats.last_error == "bad password for user 'orders'"
        assert broker.subscribe_calls == 1


async def test_unreachable_broker_is_retried_with_backoff_until_it_answers() -> None:
    broker = RefusingBroker(BrokerUnavailable("connection refused"), failures=3)
    ms = Millstream(broker=broker, reconnect_backoff=0.02, reconnect_max_backoff=0.05)
    handled: list[int] = []

    @ms.consumer("t")
    async def handle(event: dict[str, int]) -> None:
        handled.append(event["n"])

    async with ms:
        consumer = ms.consumers["handle"]
        assert consumer.state is ConsumerState.RECONNECTING
        await until(lambda: consumer.state is ConsumerState.RUNNING)
        await ms.publish("t", {"n": 7})
        await until(lambda: handled == [7])
        assert broker.subscribe_calls == 4
        assert consumer.stats.reconnects == 3


def test_bad_configuration_fails_at_construction_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"'kafak://x'.*unsupported scheme 'kafak'"):
        Millstream("kafak://x")
    with pytest.raises(ConfigError, match="prefetch"):
        Millstream("memory://", prefetch=0)
    ms = app()
    with pytest.raises(ConfigError, match="concurrency=0"):

        @ms.consumer("t", concurrency=0)
        async def handle(event: dict[str, int]) -> None: ...


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


async def test_publish_batch_keys_by_field_and_sync_handlers_work() -> None:
    ms = app()
    seen: list[tuple[str | None, object]] = []

    @ms.consumer("t", concurrency=4)
    def handle(event: dict[str, object], msg: Message) -> None:
        seen.append((msg.key, event["n"]))

    async with ms:
        ids: Sequence[str] = await ms.publish_batch(
            "t", [{"order_id": f"o-{i}", "n": i} for i in range(5)], key_by="order_id"
        )
        await until(lambda: len(seen) == 5)

    assert len(set(ids)) == 5
    assert sorted(seen) == [(f"o-{i}", i) for i in range(5)]


class Payment(BaseModel):
    order_id: str
    amount: int


async def test_poison_messages_reach_the_dead_letter_queue_with_their_reasons() -> None:
    ms = app()
    handled: list[str] = []

    @ms.consumer("payments", group="orders", retry=Retry(attempts=5, backoff=0.01))
    async def on_payment(payment: Payment) -> None:
        if payment.amount < 0:
            raise FatalError(f"negative amount {payment.amount}")
        handled.append(payment.order_id)

    async with ms:
        await ms.publish("payments", b"{not json")
        await ms.publish("payments", {"order_id": "o-1", "amount": "lots"})
        await ms.publish("payments", {"order_id": "o-2", "amount": -5})
        await ms.publish("payments", {"order_id": "o-3", "amount": 5})
        dlq = await ms.dead_letters("payments", "orders")
        await until(lambda: ms.consumers["on_payment"].stats.dead == 3)
        await until(lambda: ms.consumers["on_payment"].inflight == 0)
        letters = {letter.payload: letter for letter in await dlq.list()}

    assert handled == ["o-3"]
    assert "DecodeError" in letters[b"{not json"].error
    assert "Invalid JSON" in letters[b"{not json"].error
    assert (
        "amount: Input should be a valid integer"
        in letters[b'{"order_id":"o-1","amount":"lots"}'].error
    )
    assert letters[b'{"order_id":"o-2","amount":-5}'].error == "FatalError: negative amount -5"
    assert {letter.attempts for letter in letters.values()} == {1}


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


async def test_a_handler_raising_cancelled_error_is_a_failure_not_a_dead_worker() -> None:
    ms = app()
    handled: list[int] = []

    @ms.consumer("t", concurrency=1, retry=Retry(attempts=2, backoff=0.01, jitter=0))
    async def handle(event: dict[str, int], msg: Message) -> None:
        if event["n"] == 0 and msg.attempt == 1:
            raise asyncio.CancelledError  # e.g. awaiting a task someone else cancelled
        handled.append(event["n"])

    async with ms:
        await ms.publish_batch("t", [{"n": i} for i in range(3)])
        await until(lambda: sorted(handled) == [0, 1, 2])
        assert ms.consumers["handle"].stats.retried == 1


def logged(handler: Callable[..., object]) -> Callable[..., object]:
    """A plain decorator, as tracing and retry libraries write them."""

    @functools.wraps(handler)
    def wrapper(*args: object) -> object:
        return handler(*args)

    return wrapper


async def test_an_async_handler_under_a_plain_decorator_is_awaited() -> None:
    ms = app()
    handled: list[int] = []

    @ms.consumer("t")
    @logged
    async def handle(event: dict[str, int]) -> None:
        await asyncio.sleep(0)
        handled.append(event["n"])

    async with ms:
        await ms.publish("t", {"n": 1})
        await until(lambda: handled == [1])


async def test_a_key_function_that_fails_dead_letters_only_that_message() -> None:
    ms = app()
    handled: list[str] = []

    @ms.consumer("t", key=lambda m: m.headers["tenant"])
    async def handle(event: dict[str, str]) -> None:
        handled.append(event["v"])

    async with ms:
        await ms.publish("t", {"v": "a"}, headers={"tenant": "x"})
        await ms.publish("t", {"v": "no tenant"})
        await ms.publish("t", {"v": "b"}, headers={"tenant": "y"})
        await until(lambda: handled == ["a", "b"])
        dlq = await ms.dead_letters("t", "handle")
        await until_equal(dlq.count, 1)
        [letter] = await dlq.list()
        assert letter.error == "key function failed: KeyError: 'tenant'"
        assert ms.consumers["handle"].state is ConsumerState.RUNNING


async def test_a_hung_sync_handler_does_not_starve_the_messages_behind_it() -> None:
    ms = app()
    release = threading.Event()
    handled: list[str] = []

    @ms.consumer("t", concurrency=1, timeout=0.2, retry=Retry(attempts=2, backoff=0.01))
    def handle(event: dict[str, str]) -> None:
        if event["v"] == "hang":
            release.wait(10)
        handled.append(event["v"])

    try:
        async with ms:
            await ms.publish_batch("t", [{"v": "hang"}, {"v": "ok-1"}, {"v": "ok-2"}])
            await until(lambda: {"ok-1", "ok-2"} <= set(handled), within=5)
            dlq = await ms.dead_letters("t", "handle")
            await until_equal(dlq.count, 1)
            assert [json.loads(x.payload)["v"] for x in await dlq.list()] == ["hang"]
    finally:
        release.set()


async def test_a_message_that_keeps_killing_its_process_is_dead_lettered() -> None:
    hub = MemoryHub(lease=0.2)
    crashed = MemoryBroker(hub)
    await crashed.connect()
    await crashed.publish("t", [OutgoingMessage(b'{"n": 1}')])
    for _ in range(2):  # two members die holding it
        sub = await crashed.subscribe("t", "handle", prefetch=1)
        assert await sub.fetch(1, timeout=1)
        crashed.abandon()
        await crashed.connect()
        await asyncio.sleep(0.25)
    ms = app(hub)
    calls: list[int] = []

    @ms.consumer("t", retry=Retry(attempts=2))
    async def handle(event: dict[str, int]) -> None:
        calls.append(event["n"])

    async with ms:
        dlq = await ms.dead_letters("t", "handle")
        await until_equal(dlq.count, 1)
        [letter] = await dlq.list()

    assert calls == []
    assert "delivered 3 times without an outcome" in letter.error


async def test_a_flapping_connection_neither_uses_up_retries_nor_runs_handlers_twice() -> None:
    # Each cut gives back, counted, what the consumer held; most of it never reached a
    # handler, and some was handled but its ack lost. Neither is a failed attempt.
    hub = MemoryHub()
    broker = MemoryBroker(hub)
    ms = Millstream(broker=broker, reconnect_backoff=0.005, poll_timeout=0.05, prefetch=8)
    handled: list[int] = []

    @ms.consumer("t", retry=Retry(attempts=2, backoff=0.01))
    async def handle(event: dict[str, int]) -> None:
        await asyncio.sleep(0.002)
        handled.append(event["n"])

    await ms.publish_batch("t", [{"n": i} for i in range(400)])
    async with ms:
        consumer = ms.consumers["handle"]
        for _ in range(12):
            await until(lambda: consumer.state is ConsumerState.RUNNING and consumer.inflight > 8)
            broker.cut()
            await asyncio.sleep(0.03)
        await until(lambda: len(set(handled)) == 400, within=20)
        dlq = await ms.dead_letters("t", "handle")
        letters = await dlq.list()

    assert letters == []
    assert consumer.stats.reconnects >= 12
    assert consumer.stats.dead == 0
    # Handled before a cut swallowed the ack: acked when it comes back, not run again.
    assert len(handled) == 400


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


async def test_dead_letters_are_readable_before_the_app_starts_or_publishes() -> None:
    hub = MemoryHub()
    ms = app(hub)
    dlq = await ms.dead_letters("t", "handle")  # connects on use

    assert await dlq.count() == 0
    assert await dlq.list() == []


class LosesTheFirstDeadLetter(MemoryBroker):
    """The connection drops just as the first dead letter is being settled."""

    def __init__(self) -> None:
        super().__init__(MemoryHub())
        self.dropped = False

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> MemorySubscription:
        subscription = await super().subscribe(topic, group, prefetch=prefetch, member=member)
        settle = subscription.settle

        async def dropping(
            acks: Sequence[Message],
            retries: Sequence[tuple[Message, float]],
            deads: Sequence[tuple[Message, str]],
        ) -> None:
            if deads and not self.dropped:
                self.dropped = True
                self.cut()  # what this member held goes back, counted
                raise BrokerUnavailable("connection reset (test)")
            await settle(acks, retries, deads)

        subscription.settle = dropping  # type: ignore[method-assign]
        return subscription


async def test_a_dead_letter_whose_settling_was_lost_is_buried_again_with_its_reason() -> None:
    broker = LosesTheFirstDeadLetter()
    ms = Millstream(broker=broker, reconnect_backoff=0.01, poll_timeout=0.05)
    calls: list[int] = []

    @ms.consumer("t", retry=Retry(attempts=1))
    async def handle(event: dict[str, int]) -> None:
        calls.append(event["n"])
        raise FatalError("order 7 does not exist")

    reader = MemoryBroker(broker.hub)  # another connection: the consumer's drops
    await reader.connect()
    async with ms:
        await ms.publish("t", {"n": 7})
        dlq = await reader.dead_letters("t", "handle")
        await until_equal(dlq.count, 1)
        [letter] = await dlq.list()

    assert broker.dropped and calls == [7]  # handled once, not again on its redelivery
    assert letter.error == "FatalError: order 7 does not exist"


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
