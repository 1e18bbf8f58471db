"""Members that crash, and brokers out of reach, run against every broker that can take them.

A member that crashed (its process killed: nothing released) leaves what it
held to a member that subscribes under its name, at once, or to any member
once its lease runs out; either way each message counts an attempt, the
taker counts it in ``taken_over`` and a warning names the takeover. The
warnings differ by broker; what every one says is "member <taker> took
<over|back> <n> message(s) of <topic>/<group>", and the factory's
``says_back``/``says_expired`` give the rest each broker promises.

Where the brokers differ, the factory says how: ``leased`` opens connections
with a lease of the test's choosing, ``crash_holds`` whether what a crashed
member held waits for its lease, ``back_within`` how soon a name takes back,
``*_logged_once`` whether a takeover is one warning, and ``unreachable`` a URL
where nothing answers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest

from millstream.brokers import connect
from millstream.errors import BrokerUnavailable
from tests.brokers.redis_server import free_port
from tests.conformance.factory import BrokerFactory, group_of, needs
from tests.proxy import TcpProxy
from tests.support import events, fetch_n, numbers, total_lag

HELD_LONG = 10.0
"""A lease no test waits out: what comes back sooner came back by its member's name."""


def _takeovers(caplog: pytest.LogCaptureFixture, topic: str, group: str) -> list[str]:
    """The warnings of takeovers in ``topic``/``group``."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING
        and f" message(s) of {topic}/{group}" in record.getMessage()
    ]


def _taken(lines: list[str], taker: str) -> int:
    """How many messages ``lines`` say ``taker`` took, each line checked to say it."""
    counts = [
        re.search(rf"member {re.escape(taker)} took (?:over|back) (\d+) ", line) for line in lines
    ]
    assert all(counts), f"a warning does not say member {taker} took them: {lines}"
    return sum(int(found[1]) for found in counts if found)


async def test_a_member_back_under_its_name_takes_back_at_once_what_it_held(
    brokers: BrokerFactory, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="millstream.brokers")
    group, name = group_of(topic, "billing"), "web-1.charge"
    crashing = await brokers.connect_leased(HELD_LONG)
    restarted = await brokers.connect_leased(HELD_LONG)
    before = await crashing.subscribe(topic, group, prefetch=10, member=name)
    await restarted.publish(topic, events(6))
    held = await fetch_n(before, 6)
    assert sorted(numbers(held)) == list(range(6))
    # Settled before the crash, so not held: one done, one to retry once the rest are back.
    retry_in = brokers.back_within + 2
    await before.settle(held[:1], [(held[1], retry_in)], [])
    brokers.crash(crashing)  # the process died: nothing released, the lease left to run
    if brokers.crash_holds:
        for other in ("web-2.charge", None):  # another name, or none
            stranger = await restarted.subscribe(topic, group, prefetch=10, member=other)
            assert await stranger.fetch(10, 0.2) == [], f"{other} got them before the lease"
            assert stranger.taken_over == 0
            await stranger.close()

    started = time.monotonic()
    after = await restarted.subscribe(topic, group, prefetch=10, member=name)
    back = await fetch_n(after, 4, within=brokers.back_within + 1)
    took = time.monotonic() - started

    assert sorted(m.id for m in back) == sorted(m.id for m in held[2:])
    assert {m.attempt for m in back} == {2}, "a crash counts an attempt"
    assert took < brokers.back_within, f"taken back after {took:.2f}s (lease {HELD_LONG:g}s)"
    assert after.taken_over == 4
    lines = _takeovers(caplog, topic, group)
    assert _taken(lines, name) == 4
    assert len(lines) == 1 or not brokers.back_logged_once, lines
    if brokers.says_back is not None:
        assert all(brokers.says_back(name, topic) in line for line in lines), lines
    await after.settle(back, [], [])
    assert await after.fetch(10, 0.5) == [], "the retry came back early, or a message twice"
    [retried] = await fetch_n(after, 1, within=retry_in + 5)
    assert (retried.id, retried.attempt) == (held[1].id, 2)
    await after.settle([retried], [], [])
    if brokers.capabilities.lag:
        assert await total_lag(after) == 0
    print(f"{brokers.name}: taken back by name after {took:.2f}s (lease {HELD_LONG:g}s)")


async def test_a_takeover_after_the_lease_is_counted_and_logged_once(
    brokers: BrokerFactory, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="millstream.brokers")
    group, gone, taker = group_of(topic, "billing"), "web-3.charge", "web-1.charge"
    crashing, alive = await brokers.connect(), await brokers.connect()
    crashed = await crashing.subscribe(topic, group, prefetch=10, member=gone)
    await alive.publish(topic, events(6))
    assert sorted(numbers(await fetch_n(crashed, 6))) == list(range(6))
    brokers.crash(crashing)
    other = await alive.subscribe(topic, group, prefetch=10, member=taker)
    await alive.publish(topic, events(1, start=6))

    got = await fetch_n(other, 7, within=brokers.redelivery_after_crash + 5)
    assert sorted(numbers(got)) == list(range(7))
    # Published after the crash: attempt 1, or 2 where the broker counts ahead (Kafka's
    # delivery marks run a window ahead of what was handed out).
    [fresh] = [m for m in got if numbers([m]) == [6]]
    taken = [m for m in got if m is not fresh]
    assert {m.attempt for m in taken} == {2} and other.taken_over == 6
    await other.settle(taken, [(fresh, 0.0)], [])
    [retried] = await fetch_n(other, 1)
    assert (retried.id, retried.attempt) == (fresh.id, fresh.attempt + 1)
    await other.settle([retried], [], [])
    assert await fetch_n(other, 1, within=1.5) == []
    assert other.taken_over == 6, "a retry counted as a takeover"

    lines = _takeovers(caplog, topic, group)
    assert _taken(lines, taker) == 6
    assert len(lines) == 1 or not brokers.expired_logged_once, lines
    if brokers.says_expired is not None:
        assert all(brokers.says_expired(gone, topic) in line for line in lines), lines


async def test_an_unreachable_server_is_unavailable_not_a_crash(brokers: BrokerFactory) -> None:
    needs(brokers, "unreachable", "a server out of reach")
    assert brokers.unreachable is not None
    port = free_port()
    with TcpProxy("127.0.0.1", port) as turning_away:
        turning_away.pause()  # accepts, then closes at once
        # Nothing listening, and something that hangs up on every connection.
        for nowhere in (brokers.unreachable(port), brokers.unreachable(turning_away.port)):
            broker = connect(nowhere.url)
            with pytest.raises(BrokerUnavailable) as caught:
                await broker.connect()
            # What health asks: the same answer, whether connected before or not.
            with pytest.raises(BrokerUnavailable) as pinged:
                await broker.ping()
            await broker.close()
            for said in (str(caught.value), str(pinged.value)):
                assert nowhere.shown in said and ":pw@" not in said, said


async def test_a_ping_answers_on_a_connected_broker_and_fails_once_it_is_cut(
    brokers: BrokerFactory,
) -> None:
    """``ping`` is one round trip: it answers while the broker does, not while the
    connection is silently cut, and again once it is healed (reconnecting if need be)."""
    broker = brokers.open()
    await broker.ping()  # connects first
    await broker.ping()
    if brokers.blackhole is None or brokers.heal is None:
        return
    brokers.blackhole(broker)
    with pytest.raises((BrokerUnavailable, TimeoutError)):  # health gives it one second
        async with asyncio.timeout(2):
            await broker.ping()
    brokers.heal(broker)
    deadline = time.monotonic() + 20
    while True:
        try:
            async with asyncio.timeout(2):
                await broker.ping()
            break
        except (BrokerUnavailable, TimeoutError):
            assert time.monotonic() < deadline, "ping never answered again after healing"
            await asyncio.sleep(0.2)
