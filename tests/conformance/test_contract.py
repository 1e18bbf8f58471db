"""The broker contract (``millstream.brokers.base``), run against every adapter unchanged."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from millstream import Message, Millstream, OutgoingMessage, Retry
from millstream.brokers.base import Broker, Subscription
from millstream.runtime import ConsumerState
from tests.conformance.factory import GROUP, LEASE, BrokerFactory, group_of, needs
from tests.support import total_lag, until, until_equal


async def fetch_n(sub: Subscription, count: int, within: float = 5.0) -> list[Message]:
    """Fetch until ``count`` messages arrived or ``within`` seconds passed."""
    got: list[Message] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        got.extend(await sub.fetch(count - len(got), timeout=0.2))
    return got


def out(i: int, key: str | None = None) -> OutgoingMessage:
    return OutgoingMessage(f'{{"n": {i}}}'.encode(), key=key)


async def two_members(
    brokers: BrokerFactory, topic: str
) -> tuple[Broker, Subscription, Broker, Subscription]:
    """Two connections (two processes), each a member of group ``GROUP`` on ``topic``."""
    first, second = await brokers.connect(), await brokers.connect()
    sub_a = await first.subscribe(topic, GROUP, prefetch=8)
    sub_b = await second.subscribe(topic, GROUP, prefetch=8)
    return first, sub_a, second, sub_b


async def test_round_trip_keeps_payload_key_and_headers(brokers: BrokerFactory, topic: str) -> None:
    broker = await brokers.connect()
    sub = await broker.subscribe(topic, GROUP, prefetch=16)
    binary = bytes(range(256)) * 4
    sent = [
        OutgoingMessage(binary, key="k-1", headers={"traceparent": "00-abc-def-01", "x": "ü"}),
        OutgoingMessage(b"", headers={}),
        OutgoingMessage(b'{"order_id": "o-1"}', key="o-1"),
    ]
    before = time.time()
    await broker.publish(topic, sent)

    got = await fetch_n(sub, 3)

    assert [m.payload for m in got] == [o.payload for o in sent]
    assert [m.id for m in got] == [o.id for o in sent]
    assert [m.key for m in got] == ["k-1", None, "o-1"]
    assert got[0].headers == {"traceparent": "00-abc-def-01", "x": "ü"}
    assert all(m.attempt == 1 and m.topic == topic for m in got)
    assert all(before - 5 <= m.published_at <= time.time() + 5 for m in got)
    await sub.settle(got, [], [])
    assert await sub.fetch(10, timeout=0.3) == []


async def test_members_of_a_group_share_without_duplicates(
    brokers: BrokerFactory, topic: str
) -> None:
    first, sub_a, _, sub_b = await two_members(brokers, topic)
    await first.publish(topic, [out(i) for i in range(60)])

    seen: list[str] = []
    deadline = time.monotonic() + 10
    while len(seen) < 60 and time.monotonic() < deadline:
        for sub in (sub_a, sub_b):
            batch = await sub.fetch(7, timeout=0.1)
            seen.extend(m.id for m in batch)
            await sub.settle(batch, [], [])

    assert len(seen) == 60
    assert len(set(seen)) == 60


async def test_each_group_sees_every_message(brokers: BrokerFactory, topic: str) -> None:
    broker = await brokers.connect()
    subs = [await broker.subscribe(topic, f"group-{n}", prefetch=32) for n in range(3)]
    await broker.publish(topic, [out(i) for i in range(25)])

    for sub in subs:
        got = await fetch_n(sub, 25)
        assert [m.payload for m in got] == [out(i).payload for i in range(25)]
        await sub.settle(got, [], [])


async def test_backlog_published_before_the_group_exists_is_delivered(
    brokers: BrokerFactory, topic: str
) -> None:
    broker = await brokers.connect()
    await broker.publish(topic, [out(i) for i in range(5)])
    sub = await broker.subscribe(topic, GROUP, prefetch=16)

    got = await fetch_n(sub, 5)

    assert [m.payload for m in got] == [out(i).payload for i in range(5)]


async def test_unacked_message_is_redelivered_after_its_consumer_dies(
    brokers: BrokerFactory, topic: str
) -> None:
    doomed, sub, survivor, other = await two_members(brokers, topic)
    await survivor.publish(topic, [out(1), out(2)])
    held = await fetch_n(sub, 2)
    assert len(held) == 2
    await sub.settle([held[0]], [], [])

    brokers.crash(doomed)
    again = await fetch_n(other, 1, within=brokers.redelivery_after_crash + 10)

    assert [m.id for m in again] == [held[1].id]
    assert again[0].attempt == 2
    await other.settle(again, [], [])
    assert await other.fetch(10, timeout=brokers.redelivery_after_crash + 0.5) == []


async def test_a_member_waiting_in_fetch_keeps_what_it_holds(
    brokers: BrokerFactory, topic: str
) -> None:
    _, sub, rival, other = await two_members(brokers, topic)
    await rival.publish(topic, [out(1)])
    held = await fetch_n(sub, 1)
    assert len(held) == 1
    # A consumer with room fetches on while its handler works, for longer than
    # the lease: waiting for more must keep what it holds its own.
    waiting = asyncio.ensure_future(sub.fetch(8, timeout=2.5 * LEASE))
    assert await other.fetch(8, timeout=2.5 * LEASE) == []
    assert await waiting == []
    await sub.settle(held, [], [])


async def test_close_releases_unsettled_messages_without_counting_an_attempt(
    brokers: BrokerFactory, topic: str
) -> None:
    broker = await brokers.connect()
    sub = await broker.subscribe(topic, GROUP, prefetch=8)
    await broker.publish(topic, [out(1), out(2), out(3)])
    held = await fetch_n(sub, 3)
    await sub.settle([held[0]], [], [])

    await sub.close()
    await sub.close()  # twice is safe
    sub = await broker.subscribe(topic, GROUP, prefetch=8)
    again = await fetch_n(sub, 2, within=3.0)

    assert sorted(m.id for m in again) == sorted(m.id for m in held[1:])
    assert all(m.attempt == 1 for m in again)


async def test_retry_waits_its_delay_and_counts_attempts(
    brokers: BrokerFactory, topic: str
) -> None:
    broker = await brokers.connect()
    sub = await broker.subscribe(topic, GROUP, prefetch=8)
    await broker.publish(topic, [out(1)])
    [first] = await fetch_n(sub, 1)
    assert first.attempt == 1

    started = time.monotonic()
    await sub.settle([], [(first, 1.0)], [])
    early = await sub.fetch(10, timeout=0.5)
    assert early == [], "redelivered before its retry delay"
    [second] = await fetch_n(sub, 1, within=5.0)
    assert time.monotonic() - started >= 0.95
    assert second.id == first.id and second.attempt == 2 and second.payload == first.payload

    await sub.settle([], [(second, 0.05)], [])
    [third] = await fetch_n(sub, 1)
    assert third.attempt == 3


async def test_dead_letters_keep_the_reason_and_can_be_replayed_and_purged(
    brokers: BrokerFactory, topic: str
) -> None:
    broker = await brokers.connect()
    sub = await broker.subscribe(topic, GROUP, prefetch=8)
    await broker.publish(
        topic, [OutgoingMessage(b"\x00poison", key="k", headers={"h": "v"}), out(2), out(3)]
    )
    got = await fetch_n(sub, 3)
    await sub.settle([], [], [(got[0], "FatalError: poison"), (got[1], "ValueError: bad")])
    await sub.settle([got[2]], [], [])

    dlq = await broker.dead_letters(topic, GROUP)
    assert await dlq.count() == 2
    letters = await dlq.list()
    assert [letter.error for letter in letters] == ["ValueError: bad", "FatalError: poison"]
    poison = letters[1]
    assert (poison.payload, poison.key, poison.headers) == (b"\x00poison", "k", {"h": "v"})
    assert poison.attempts == 1 and poison.message_id == got[0].id
    assert [letter.id for letter in await dlq.list(limit=1, offset=1)] == [poison.id]

    assert await dlq.replay([poison.id]) == 1
    assert await dlq.replay([poison.id]) == 0
    [replayed] = await fetch_n(sub, 1)
    assert replayed.id == got[0].id and replayed.payload == b"\x00poison"
    assert replayed.attempt == 1
    await sub.settle([replayed], [], [])

    assert await dlq.purge() == 1
    assert await dlq.count() == 0
    assert await sub.fetch(10, timeout=0.3) == []


async def test_retries_and_dead_letters_stay_in_their_group(
    brokers: BrokerFactory, topic: str
) -> None:
    billing_group, shipping_group = group_of(topic, "billing"), group_of(topic, "shipping")
    broker = await brokers.connect()
    billing = await broker.subscribe(topic, billing_group, prefetch=10)
    shipping = await broker.subscribe(topic, shipping_group, prefetch=10)
    await broker.publish(topic, [out(0), out(1)])
    failed, poison = await fetch_n(billing, 2)
    shipped = await fetch_n(shipping, 2)
    assert [m.payload for m in shipped] == [out(0).payload, out(1).payload]
    await shipping.settle(shipped, [], [])
    await billing.settle([], [(failed, 0.1)], [(poison, "FatalError: no")])

    [again] = await fetch_n(billing, 1, within=2.0)
    assert (again.id, again.attempt) == (failed.id, 2)
    await billing.settle([again], [], [])
    assert await (await broker.dead_letters(topic, shipping_group)).count() == 0
    dlq = await broker.dead_letters(topic, billing_group)
    assert await dlq.count() == 1
    assert await dlq.replay() == 1
    [replayed] = await fetch_n(billing, 1, within=2.0)
    assert (replayed.id, replayed.attempt) == (poison.id, 1)
    await billing.settle([replayed], [], [])

    assert await shipping.fetch(10, 0.5) == [], "the other group got a retry or a replay"
    assert await (await broker.dead_letters(topic, shipping_group)).count() == 0
    assert (await total_lag(billing), await total_lag(shipping)) == (0, 0)


async def test_lag_counts_what_the_group_has_not_acked(brokers: BrokerFactory, topic: str) -> None:
    needs(brokers, "lag", "a lag check")
    broker = await brokers.connect()
    sub = await broker.subscribe(topic, GROUP, prefetch=8)
    await broker.publish(topic, [out(i) for i in range(10)])
    lag = await sub.lag()
    assert lag is not None and lag.total == 10

    got = await fetch_n(sub, 10)
    await sub.settle(got[:4], [], [])
    lag = await sub.lag()
    assert lag is not None and lag.total == 6
    await sub.settle(got[4:], [], [])
    lag = await sub.lag()
    assert lag is not None and lag.total == 0


async def test_per_key_order_holds_at_concurrency(brokers: BrokerFactory, topic: str) -> None:
    ms = Millstream(broker=brokers.open(), settle_interval=0.002)
    seen: dict[str, list[int]] = defaultdict(list)
    active: set[str] = set()
    overlaps = 0

    @ms.consumer(topic, group=GROUP, concurrency=8, key="k")
    async def handle(event: dict[str, object]) -> None:
        nonlocal overlaps
        key = str(event["k"])
        overlaps += key in active
        active.add(key)
        await asyncio.sleep(0.0005 * (int(str(event["n"])) % 3))
        seen[key].append(int(str(event["n"])))
        active.discard(key)

    async with ms:
        await ms.publish_batch(topic, [{"k": f"key-{i % 100}", "n": i} for i in range(1500)])
        await until(lambda: sum(map(len, seen.values())) >= 1500)

    assert overlaps == 0
    assert len(seen) == 100
    assert sum(map(len, seen.values())) == 1500
    for key, numbers in seen.items():
        assert numbers == sorted(numbers), f"{key} out of order"


async def test_consumer_recovers_after_the_connection_drops(
    brokers: BrokerFactory, topic: str
) -> None:
    broker = brokers.open()
    ms = Millstream(broker=broker, reconnect_backoff=0.05, poll_timeout=0.2)
    handled: list[int] = []

    @ms.consumer(topic, group=GROUP, concurrency=4)
    async def handle(event: dict[str, int]) -> None:
        handled.append(event["n"])

    async with ms:
        consumer = ms.consumers["handle"]
        await ms.publish_batch(topic, [{"n": i} for i in range(50)])
        await until(lambda: len(set(handled)) >= 50)
        brokers.cut(broker)
        await until(lambda: consumer.state is ConsumerState.RECONNECTING, within=5)
        await until(lambda: consumer.state is ConsumerState.RUNNING, within=10)
        await ms.publish_batch(topic, [{"n": i} for i in range(50, 100)])
        await until(lambda: len(set(handled)) >= 100, within=10)

    assert set(handled) == set(range(100))
    assert consumer.stats.reconnects >= 1


async def test_runtime_dead_letters_exhausted_messages_and_replays_them(
    brokers: BrokerFactory, topic: str
) -> None:
    ms = Millstream(broker=brokers.open(), settle_interval=0.002)
    attempts: list[int] = []
    healed = False

    @ms.consumer(topic, group=GROUP, retry=Retry(attempts=3, backoff=0.05, jitter=0))
    async def handle(event: dict[str, int], msg: Message) -> None:
        attempts.append(msg.attempt)
        if not healed:
            raise ConnectionError("downstream is down")

    async with ms:
        await ms.publish(topic, {"n": 1})
        dlq = await ms.dead_letters(topic, GROUP)
        await until(lambda: len(attempts) >= 3)
        await until_equal(lambda: dlq.count(), 1)
        [letter] = await dlq.list()
        assert letter.attempts == 3
        assert "attempts exhausted (3 of 3)" in letter.error
        assert "ConnectionError: downstream is down" in letter.error
        healed = True
        assert await dlq.replay() == 1
        await until(lambda: len(attempts) >= 4)

    assert attempts == [1, 2, 3, 1]
