"""The NATS JetStream broker under faults: silent partitions, crashed members, lost connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from millstream import Millstream
from millstream.brokers.nats.broker import NatsBroker
from millstream.brokers.nats.names import Names
from millstream.errors import BrokerUnavailable
from millstream.runtime import ConsumerState
from tests.brokers.nats_support import fetch_until, opened
from tests.proxy import TcpProxy
from tests.support import consumer_lag, drain, events, numbers, until, until_equal


def crash(proxy: TcpProxy) -> None:
    """The member's process died: its connection goes, nothing is released, it never returns."""
    proxy.pause()
    proxy.cut()


def took_over(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]


async def test_a_silent_partition_is_noticed_within_seconds_and_nothing_is_lost(
    shared: str, topic: str, proxy: TcpProxy
) -> None:
    ms = Millstream(f"nats://127.0.0.1:{proxy.port}?lease=1", reconnect_backoff=0.05)
    handled: set[int] = set()

    @ms.consumer(topic, group="billing", concurrency=4)
    async def handle(event: dict[str, int]) -> None:
        await asyncio.sleep(0.002)
        handled.add(event["n"])

    publisher = await opened(shared)  # not through the proxy
    try:
        async with ms:
            consumer = ms.consumers["handle"]
            await publisher.publish(topic, events(300))
            await until(lambda: len(handled) >= 100, within=10)
            proxy.blackhole()
            started = time.monotonic()
            await until(lambda: consumer.state is not ConsumerState.RUNNING, within=10)
            noticed = time.monotonic() - started
            # Found by a request that went unanswered (a fetch's, or a settle's), not by the
            # connection's pings, which are slower.
            assert "no answer" in (consumer.stats.last_error or "")
            assert noticed < 5, noticed
            await publisher.publish(topic, events(100, start=300))
            proxy.heal()
            await until(lambda: len(handled) == 400, within=20)
            await until(lambda: consumer.state is ConsumerState.RUNNING, within=5)
            await until_equal(lambda: consumer_lag(ms), 0)
    finally:
        await publisher.close()
    print(f"silent partition noticed after {noticed:.1f}s")


async def test_an_idle_connection_cut_off_silently_is_found_dead_by_its_pings(
    proxy: TcpProxy,
) -> None:
    broker = await opened(f"nats://127.0.0.1:{proxy.port}")

    def lost() -> bool:
        try:
            broker.connection()
        except BrokerUnavailable:
            return True
        return False

    try:
        proxy.blackhole()
        await until(lost, within=10)
    finally:
        await broker.close()


async def test_what_an_expired_lease_gives_another_member_counts_and_a_retry_does_not(
    shared: str, topic: str, proxy: TcpProxy, warnings: pytest.LogCaptureFixture
) -> None:
    crashed = await opened(f"nats://127.0.0.1:{proxy.port}?lease=1")
    other = await opened(f"{shared}?lease=1")
    try:
        gone = await crashed.subscribe(topic, "billing", prefetch=5)
        alive = await other.subscribe(topic, "billing", prefetch=5)
        await other.publish(topic, events(5))
        assert len(await fetch_until(gone, 5, within=3)) == 5
        crash(proxy)
        await other.publish(topic, events(1, start=5))
        [failed] = await fetch_until(alive, 1, within=3)
        await alive.settle([], [(failed, 0.0)], [])  # handler failed: retried at once

        taken = await fetch_until(alive, 6, within=5)
        assert sorted(numbers(taken)) == list(range(6))
        assert {m.attempt for m in taken} == {2}
        assert alive.taken_over == 5, "the retry counted as a takeover, or the crash did not"
        assert all("(ack_wait 1s) ran out" in line for line in took_over(warnings))
        counts = [int(line.split(" took over ")[1].split()[0]) for line in took_over(warnings)]
        assert sum(counts) == 5
        await alive.settle(taken, [], [])
        assert await drain(alive) == []
    finally:
        await other.close()
        await crashed.close()


def waiting_on(client: NatsClient) -> Callable[[Names], Awaitable[int]]:
    """How many pull requests wait on a group's consumer (read on ``client``)."""

    async def waiting(names: Names) -> int:
        info = await client.jetstream().consumer_info(names.stream, names.consumer)
        return info.num_waiting or 0

    return waiting


def lost(broker: NatsBroker) -> bool:
    try:
        broker.connection()
    except BrokerUnavailable:
        return True
    return False


async def test_what_a_cut_member_held_but_never_handed_out_comes_back_uncounted(
    shared: str, topic: str, proxy: TcpProxy, warnings: pytest.LogCaptureFixture
) -> None:
    broker = await opened(f"nats://127.0.0.1:{proxy.port}?lease=30")
    publisher = await opened(shared)
    client = await nats.connect(shared)
    waiting = waiting_on(client)
    names = Names(topic, "billing")

    async def recorded() -> int:
        record = f"_ms.held.{names.stream}.{names.consumer}.web-1.charge"
        try:
            found = await client.jetstream().get_last_msg("MSHELD", record)
        except NotFoundError:
            return 0
        return len((found.data or b"").split(b"\n")) - 1

    try:
        sub = await broker.subscribe(topic, "billing", prefetch=6, member="web-1.charge")
        asking = asyncio.ensure_future(sub.fetch(6, 10))
        await until_equal(lambda: waiting(names), 1)  # its request waits on the server
        asking.cancel()  # what the request delivers now waits in the member
        await publisher.publish(topic, events(6))
        [handed] = await sub.fetch(1, 3)
        await until_equal(recorded, 6)  # all six received, and in the member's record
        proxy.cut()  # five of them never handed out
        await until(lambda: lost(broker), within=5)
        await sub.close()

        await broker.connect()
        again = await broker.subscribe(topic, "billing", prefetch=6, member="web-1.charge")
        taken = await fetch_until(again, 6, within=3)  # taken back at once from the record
        attempts = {m.id: m.attempt for m in taken}
        # The one handed out is the runtime's to judge (it knows whether a handler started).
        assert attempts.pop(handed.id) == 2
        assert set(attempts.values()) == {1}, "held, never handed out: no attempt"
        assert again.taken_over == 0 and took_over(warnings) == [], "no crash: no takeover"
        await again.settle(taken, [], [])
        assert await drain(again) == []
    finally:
        await client.close()
        await publisher.close()
        await broker.close()


async def test_what_a_lost_connection_swallowed_comes_back_uncounted(
    shared: str, topic: str, proxy: TcpProxy, warnings: pytest.LogCaptureFixture
) -> None:
    broker = await opened(f"nats://127.0.0.1:{proxy.port}?lease=1")
    publisher = await opened(shared)
    client = await nats.connect(shared)
    waiting = waiting_on(client)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        fetching = asyncio.ensure_future(sub.fetch(10, 10))
        await until_equal(lambda: waiting(Names(topic, "billing")), 1)  # waits on the server
        proxy.blackhole()
        await publisher.publish(topic, events(10))  # sent into the partition: never received
        with pytest.raises(BrokerUnavailable):
            await fetching
        await sub.close()
        proxy.heal()

        await broker.connect()
        again = await broker.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        taken = await fetch_until(again, 10, within=5)  # back once their lease ran out
        assert sorted(numbers(taken)) == list(range(10))
        assert {m.attempt for m in taken} == {1}, "lost in the network: no attempt"
        assert again.taken_over == 0 and took_over(warnings) == [], "no crash: no takeover"
        await again.settle(taken, [], [])
    finally:
        await client.close()
        await publisher.close()
        await broker.close()


async def test_a_retry_due_while_the_connection_was_lost_counts_once(
    shared: str, topic: str, proxy: TcpProxy
) -> None:
    # NATS 2.9 counts a redelivery that falls due when the only waiting request's
    # connection is gone, and puts it back unsent: it comes back after its lease,
    # counted twice. (It also sends the last message it delivered once more, as new.)
    broker = await opened(f"nats://127.0.0.1:{proxy.port}?lease=1")
    publisher = await opened(shared)
    client = await nats.connect(shared)
    waiting = waiting_on(client)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=2, member="web-1.charge")
        await publisher.publish(topic, events(2))
        failed, done = await fetch_until(sub, 2, within=3)
        await sub.settle([done], [(failed, 0.5)], [])  # one handler failed: again in 0.5 s
        fetching = asyncio.ensure_future(sub.fetch(2, 10))
        await until_equal(lambda: waiting(Names(topic, "billing")), 1)  # waits on the server
        proxy.cut()
        with pytest.raises(BrokerUnavailable):
            await fetching
        await sub.close()
        await asyncio.sleep(1.0)  # the retry falls due while no live request waits

        await broker.connect()
        again = await broker.subscribe(topic, "billing", prefetch=2, member="web-1.charge")
        taken = await fetch_until(again, 2, within=4)
        [retried] = [m for m in taken if m.id == failed.id]
        assert retried.attempt == 2, f"one failure: attempt 2, not {retried.attempt}"
        await again.settle(taken, [], [])
    finally:
        await client.close()
        await publisher.close()
        await broker.close()
