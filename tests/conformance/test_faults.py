"""The faults a production service meets, run against every broker that can take them.

Each test needs one of the factory's fault hooks (see ``factory.py``); a broker
without it skips, saying so. Every test records its figures (published,
handled, lost, duplicates, seconds), printed in the run's "fault figures"
section.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from millstream import Message, Millstream, Retry
from millstream.brokers import connect
from millstream.brokers.base import Broker
from millstream.message import OutgoingMessage
from millstream.runtime import ConsumerRuntime, ConsumerState
from tests.conformance.factory import BrokerFactory, group_of, needs
from tests.conftest import report
from tests.procs.group import ends, spawn, starts, stop
from tests.support import consumer_lag, fetch_n, until, until_equal

pytestmark = pytest.mark.slow


def _app(broker: Broker, **settings: object) -> Millstream:
    settings = {"reconnect_backoff": 0.05, "poll_timeout": 0.2, **settings}
    return Millstream(broker=broker, **settings)


def _payloads(count: int, start: int = 0) -> list[dict[str, int]]:
    return [{"n": n} for n in range(start, start + count)]


async def _dead_letters(ms: Millstream, topic: str, group: str) -> list[str]:
    dlq = await ms.dead_letters(topic, group)
    return [letter.error for letter in await dlq.list(limit=1000)]


async def test_malformed_metadata_from_another_producer_never_stops_the_consumer(
    brokers: BrokerFactory, topic: str
) -> None:
    needs(brokers, "publish_malformed", "malformed metadata from a raw client")
    assert brokers.publish_malformed is not None
    ms = _app(await brokers.connect())
    seen: list[bytes] = []
    numbers: set[int] = set()

    @ms.consumer(topic, group=group_of(topic))
    async def handle(payload: bytes) -> None:
        seen.append(payload)
        if payload.startswith(b'{"n":'):
            numbers.add(json.loads(payload)["n"])

    async with ms:
        consumer = ms.consumers["handle"]
        malformed = await brokers.publish_malformed(topic)
        await ms.publish_batch(topic, _payloads(100))
        await until(lambda: numbers == set(range(100)), within=30)
        wanted = {m.payload for m in malformed}
        letters: list[str] = []

        async def accounted() -> bool:
            letters[:] = await _dead_letters(ms, topic, group_of(topic))
            return len(wanted & set(seen)) + len(letters) >= len(malformed)

        for _ in range(200):
            if await accounted():
                break
            await asyncio.sleep(0.1)

    assert consumer.stats.reconnects == 0, consumer.stats.last_error
    assert consumer.state is ConsumerState.STOPPED
    for bad in malformed:
        if bad.payload in seen:
            continue
        named = [e for e in letters if bad.field in e and bad.value in e]
        assert named, f"{bad} was neither handled nor dead-lettered naming it: {letters}"
    report(
        f"malformed metadata [{brokers.name}]",
        kinds=len(malformed),
        handled=len(wanted & set(seen)),
        dead_lettered=len(letters),
        reconnects=consumer.stats.reconnects,
    )


async def test_repeated_short_cuts_dead_letter_nothing(brokers: BrokerFactory, topic: str) -> None:
    # Two attempts only, and a cut as soon as the consumer is back and holding messages
    # (what the broker pushed right after the reconnect is in transit at such a cut, every
    # time): a delivery counted for every cut would dead-letter at the second.
    broker = await brokers.connect()
    publisher = await brokers.connect()
    ms = _app(broker, prefetch=32)
    handled: list[int] = []

    @ms.consumer(topic, group=group_of(topic), concurrency=4, retry=Retry(attempts=2, backoff=0.05))
    async def handle(event: dict[str, int]) -> None:
        await asyncio.sleep(0.01)
        handled.append(event["n"])

    cuts, published = 6, 0
    async with ms:
        consumer = ms.consumers["handle"]
        for cut in range(cuts):
            await publisher.publish(topic, [_out(p) for p in _payloads(150, published)])
            published += 150
            await until(_holding(consumer, reconnects=cut), within=30)
            brokers.cut(broker)
        await until(lambda: set(handled) == set(range(published)), within=60)
        letters = await _dead_letters(ms, topic, group_of(topic))

    assert letters == []
    assert consumer.stats.dead == 0 and consumer.stats.reconnects == cuts
    report(
        f"repeated cuts [{brokers.name}]",
        cuts=cuts,
        published=published,
        handled=len(set(handled)),
        lost=published - len(set(handled)),
        duplicates=len(handled) - len(set(handled)),
        dead_lettered=len(letters),
        reconnects=consumer.stats.reconnects,
    )


async def test_a_silent_partition_is_noticed_within_10s_and_loses_nothing(
    brokers: BrokerFactory, topic: str
) -> None:
    needs(brokers, "blackhole", "a silent partition")
    assert brokers.blackhole is not None and brokers.heal is not None
    broker = await brokers.connect()
    publisher = await brokers.connect()
    ms = _app(broker)
    handled: list[int] = []

    @ms.consumer(topic, group=group_of(topic))
    async def handle(event: dict[str, int]) -> None:
        handled.append(event["n"])

    async with ms:
        consumer = ms.consumers["handle"]
        await publisher.publish(topic, [_out(p) for p in _payloads(50)])
        await until(lambda: len(set(handled)) == 50, within=30)
        brokers.blackhole(broker)
        silent = time.monotonic()
        await until(lambda: consumer.state is not ConsumerState.RUNNING, within=30)
        noticed = time.monotonic() - silent
        await publisher.publish(topic, [_out(p) for p in _payloads(50, 50)])
        await asyncio.sleep(2.0)  # the partition lasts: reconnecting goes nowhere meanwhile
        brokers.heal(broker)
        await until(lambda: set(handled) == set(range(100)), within=60)
        recovered = time.monotonic() - silent
        assert consumer.state is ConsumerState.RUNNING

    assert noticed < 10, f"the consumer stayed RUNNING for {noticed:.1f}s of silence"
    report(
        f"silent partition [{brokers.name}]",
        noticed_s=noticed,
        recovered_s=recovered,
        published=100,
        lost=100 - len(set(handled)),
        duplicates=len(handled) - len(set(handled)),
    )


async def test_the_broker_killed_and_restarted_loses_nothing(
    brokers: BrokerFactory, topic: str, tmp_path: Path
) -> None:
    needs(brokers, "durable_server", "a kill -9 of its server")
    assert brokers.durable_server is not None
    server, url = brokers.durable_server(tmp_path)
    with server:
        ms = Millstream(url, reconnect_backoff=0.05, poll_timeout=0.2)
        handled: list[int] = []

        @ms.consumer(topic, group=group_of(topic), concurrency=4)
        async def handle(event: dict[str, int]) -> None:
            await asyncio.sleep(0.003)
            handled.append(event["n"])

        publisher = connect(url)
        await publisher.connect()
        try:
            await publisher.publish(topic, [_out(p) for p in _payloads(600)])
            async with ms:
                consumer = ms.consumers["handle"]
                await until(lambda: len(set(handled)) >= 200, within=20)
                killed = time.monotonic()
                server.restart(kill=True, down_for=0.5)  # the durable storage must carry it
                await until(lambda: consumer.stats.reconnects >= 1, within=15)
                await until(lambda: consumer.state is ConsumerState.RUNNING, within=20)
                back = time.monotonic() - killed
                await _publish_retrying(publisher, topic, _payloads(100, 600))
                await until(lambda: set(handled) == set(range(700)), within=40)
                await until_equal(lambda: consumer_lag(ms), 0)
        finally:
            await publisher.close()

    assert consumer.stats.reconnects >= 1

    report(
        f"broker kill -9 [{brokers.name}]",
        published=700,
        handled=len(set(handled)),
        lost=700 - len(set(handled)),
        duplicates=len(handled) - len(set(handled)),
        running_again_s=back,
    )


async def test_a_member_killed_and_restarted_gets_its_messages_back_at_once(
    brokers: BrokerFactory, topic: str, tmp_path: Path
) -> None:
    needs(brokers, "process_url", "a member in another process")
    assert brokers.process_url is not None
    log = tmp_path / "member.log"
    # Its own directory of member slots: the restarted process must find its old
    # name free, whatever else runs on this host.
    env = {"TMPDIR": str(tmp_path)}
    publisher = connect(brokers.process_url)
    await publisher.connect()
    member = spawn(brokers.process_url, topic, log, 0.05, env, group_of(topic))
    try:
        await publisher.publish(topic, [_out(p) for p in _payloads(60)])
        await until(lambda: len(starts(log)) >= 4, within=30)
        member.send_signal(signal.SIGKILL)  # it holds most of the 60, unsettled
        member.wait(timeout=10)
        before = {n for n, _ in ends(log)}
        restarted_at = time.monotonic()
        member = spawn(brokers.process_url, topic, log, 0.05, env, group_of(topic))
        await until(lambda: {n for n, _ in ends(log)} == set(range(60)), within=60)
        recovery = time.monotonic() - restarted_at
    finally:
        stop([member])
        await publisher.close()

    finished = Counter(n for n, _ in ends(log))
    report(
        f"member SIGKILL and restart [{brokers.name}]",
        published=60,
        handled_before_kill=len(before),
        lost=60 - len(finished),
        duplicates=sum(finished.values()) - len(finished),
        recovery_s=recovery,
    )
    assert recovery < brokers.restart_recovery, (
        f"the restarted member took {recovery:.1f}s to finish what it held "
        f"(at most {brokers.restart_recovery:g}s expected)"
    )


async def test_a_foreign_message_keeps_its_id_through_retries_and_dead_letters(
    brokers: BrokerFactory, topic: str
) -> None:
    needs(brokers, "publish_raw", "a message from a producer that is not millstream")
    assert brokers.publish_raw is not None
    ms = _app(await brokers.connect())
    ids: list[str] = []

    @ms.consumer(topic, group=group_of(topic), retry=Retry(attempts=3, backoff=0.05, jitter=0))
    async def handle(payload: bytes, msg: Message) -> None:
        ids.append(msg.id)
        raise RuntimeError("the payment service is down")

    async with ms:
        await brokers.publish_raw(topic, b'{"order": 1}')
        dlq = await ms.dead_letters(topic, group_of(topic))
        await until(lambda: len(ids) == 3, within=30)
        for _ in range(200):
            letters = await dlq.list()
            if letters:
                break
            await asyncio.sleep(0.05)

    assert len(set(ids)) == 1 and ids[0], f"the id changed between deliveries: {ids}"
    assert [letter.message_id for letter in letters] == ids[:1]


async def test_a_foreign_message_keeps_its_id_through_retry_release_and_dead_letter(
    brokers: BrokerFactory, topic: str
) -> None:
    needs(brokers, "publish_raw", "a message from a producer that is not millstream")
    assert brokers.publish_raw is not None
    group = group_of(topic)
    broker = await brokers.connect()
    sub = await broker.subscribe(topic, group, prefetch=10)
    await brokers.publish_raw(topic, b'{"n": 0}')
    [first] = await fetch_n(sub, 1)
    assert first.id and first.attempt == 1
    await sub.settle([], [(first, 0.0)], [])
    [retried] = await fetch_n(sub, 1)
    assert (retried.id, retried.attempt) == (first.id, 2)

    await sub.close()  # released, uncounted
    sub = await broker.subscribe(topic, group, prefetch=10)
    [released] = await fetch_n(sub, 1)
    assert (released.id, released.attempt) == (first.id, 2)
    await sub.settle([], [], [(released, "FatalError: no")])
    dlq = await broker.dead_letters(topic, group)
    [letter] = await dlq.list()
    assert (letter.message_id, letter.attempts) == (first.id, 2)

    assert await dlq.replay() == 1
    [replayed] = await fetch_n(sub, 1)
    assert (replayed.id, replayed.attempt) == (first.id, 1)
    await sub.settle([replayed], [], [])


def _holding(consumer: ConsumerRuntime, reconnects: int) -> Callable[[], bool]:
    """Running again after ``reconnects`` lost connections, and holding messages."""
    return lambda: (
        consumer.stats.reconnects == reconnects
        and consumer.state is ConsumerState.RUNNING
        and consumer.inflight > 8
    )


def _out(payload: dict[str, int]) -> OutgoingMessage:
    return OutgoingMessage(json.dumps(payload).encode())


async def _publish_retrying(broker: Broker, topic: str, payloads: list[dict[str, int]]) -> None:
    """Publish once the restarted server takes it (its first seconds may refuse)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            await broker.publish(topic, [_out(p) for p in payloads])
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
