"""Broker tests whose body is the same for every broker, and the small helpers they share.

Each broker's test file (test_redis.py, test_nats.py, test_rabbitmq.py,
test_kafka.py) keeps its test names and calls these with its URL and the few
knobs where brokers differ; assertions only one broker makes stay in its file.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from millstream import Message, Millstream, OutgoingMessage
from millstream.brokers.base import Broker, Subscription
from millstream.runtime import ConsumerRuntime, ConsumerState
from tests.procs.group import ends, ready, spawn, starts, stop
from tests.proxy import TcpProxy
from tests.support import until, until_equal

Opener = Callable[[str], Awaitable[Broker]]
"""Opens (and connects) a broker from its URL."""

Take = Callable[[Subscription, int], Awaitable[list[Message]]]
"""Fetches the given number of messages that were published, as the broker delivers them."""


def events(count: int, start: int = 0) -> list[OutgoingMessage]:
    return [OutgoingMessage(f'{{"n": {i}}}'.encode()) for i in range(start, start + count)]


def numbers(messages: list[Message]) -> list[int]:
    return [json.loads(m.payload)["n"] for m in messages]


async def total_lag(subscription: Subscription) -> int | None:
    lag = await subscription.lag()
    return None if lag is None else lag.total


async def drain(subscription: Subscription, *, timeout: float = 0.3) -> list[Message]:
    """Fetch and ack until a fetch comes back empty."""
    taken: list[Message] = []
    while batch := await subscription.fetch(100, timeout):
        await subscription.settle(batch, [], [])
        taken += batch
    return taken


async def fetch_n(
    subscription: Subscription, count: int, within: float = 5.0, wait: float = 0.5
) -> list[Message]:
    """Fetch until ``count`` messages came, or ``within`` seconds passed (a fetch returns
    what is there once one message is, so it may take several)."""
    taken: list[Message] = []
    deadline = time.monotonic() + within
    while len(taken) < count and time.monotonic() < deadline:
        taken += await subscription.fetch(count - len(taken), wait)
    return taken


def at_least(handled: list[int], count: int) -> Callable[[], bool]:
    return lambda: len(set(handled)) >= count


async def consumer_lag(ms: Millstream) -> int | None:
    """The total lag of the app's consumer ``handle``."""
    lag = await ms.consumers["handle"].lag()
    return None if lag is None else lag.total


# -- dead letters through the command line --------------------------------------


def dead_letters_round_trip_through_the_cli(
    url: str,
    topic: str,
    opened: Opener,
    take: Take,
    *,
    group: str = "orders",
    redelivered: bool = True,
    close_after_burying: bool = False,
) -> list[dict[str, Any]]:
    """Bury two messages, list them as JSON, replay one by its id, purge the other.

    With ``redelivered``, the replayed message is fetched back at attempt 1.
    Returns the listed letters, for checks of the broker's own.
    """
    from typer.testing import CliRunner

    from millstream.cli import app

    runner = CliRunner()

    async def bury() -> list[str]:
        broker = await opened(url)
        try:
            sub = await broker.subscribe(topic, group, prefetch=10)
            await broker.publish(topic, [OutgoingMessage(b"\xffbin", key="k"), *events(1)])
            got = await take(sub, 2)
            await sub.settle([], [], [(m, f"FatalError: poison {i}") for i, m in enumerate(got)])
            if close_after_burying:
                await sub.close()
            return [m.id for m in got]
        finally:
            await broker.close()

    async def fetched_again() -> list[Message]:
        broker = await opened(url)
        try:
            sub = await broker.subscribe(topic, group, prefetch=10)
            return await take(sub, 1)
        finally:
            await broker.close()

    ids = asyncio.run(bury())
    listed = runner.invoke(app, ["dlq", "list", topic, "-g", group, "-b", url, "--json"])
    assert listed.exit_code == 0, listed.output
    letters = [json.loads(line) for line in listed.output.splitlines()]
    assert [(x["message_id"], x["error"]) for x in letters] == [
        (ids[1], "FatalError: poison 1"),
        (ids[0], "FatalError: poison 0"),
    ]
    assert letters[1]["key"] == "k" and letters[1]["attempts"] == 1

    replay = ["dlq", "replay", topic, "-g", group, "-b", url, "--id", letters[1]["id"]]
    replayed = runner.invoke(app, replay)
    assert replayed.exit_code == 0 and "replayed 1 dead letter(s)" in replayed.output
    if redelivered:
        [back] = asyncio.run(fetched_again())
        assert (back.id, back.payload, back.attempt) == (ids[0], b"\xffbin", 1)

    purged = runner.invoke(app, ["dlq", "purge", topic, "-g", group, "-b", url, "-y"])
    assert purged.exit_code == 0 and "purged 1 dead letter(s)" in purged.output
    return letters


# -- the running consumer -----------------------------------------------------------


async def lag_is_reported_in_the_consumer_health(url: str, topic: str) -> None:
    """25 messages wait for a paused consumer: its lag and its health document say 25."""
    ms = Millstream(url)

    @ms.consumer(topic, group="billing")
    async def handle(event: dict[str, int]) -> None:
        pass

    async with ms:
        consumer = ms.consumers["handle"]
        consumer.pause()
        await ms.publish_batch(topic, [{"n": i} for i in range(25)])
        lag = await consumer.lag()
        assert lag is not None and lag.total == 25

        health = pytest.importorskip("millstream.observability.health")
        [report] = await health.collect([consumer])
        document = health.Health(ms.broker.url, True, False, [report]).document()
        assert document["components"]["consumers"]["components"]["handle"]["details"]["lag"] == 25

        consumer.resume()
        await until_equal(lambda: consumer_lag(ms), 0)


async def cut_connection_mid_stream(
    ms: Millstream,
    publisher: Broker,
    topic: str,
    proxy: TcpProxy,
    *,
    waves: int = 4,
    back_within: float = 5.0,
) -> tuple[list[int], ConsumerRuntime]:
    """Publish ``waves`` waves of 250 messages, cutting the consumer's connection in each.

    ``ms`` connects through ``proxy``; ``publisher`` does not (publishing goes
    on) and is closed here. Every message must be handled and the lag reach
    0; ``back_within`` is how long the consumer may take to run again after
    a cut. Returns the numbers handled (repeats included) and the consumer.
    """
    handled: list[int] = []

    @ms.consumer(topic, group="billing", concurrency=4)
    async def handle(event: dict[str, int]) -> None:
        await asyncio.sleep(0.002)
        handled.append(event["n"])

    total = waves * 250
    try:
        async with ms:
            consumer = ms.consumers["handle"]
            for wave in range(waves):
                await publisher.publish(topic, events(250, start=wave * 250))
                await until(at_least(handled, wave * 250 + 50), within=10)
                proxy.cut()
                await until(lambda: consumer.state is ConsumerState.RECONNECTING, within=5)
                await until(lambda: consumer.state is ConsumerState.RUNNING, within=back_within)
            await until(lambda: len(set(handled)) == total, within=20)
            await until_equal(lambda: consumer_lag(ms), 0)
    finally:
        await publisher.close()

    assert set(handled) == set(range(total))
    assert consumer.stats.reconnects >= waves
    return handled, consumer


# -- several processes ------------------------------------------------------------


async def sigkill_one_of_three(
    url: str,
    topic: str,
    tmp_path: Path,
    publisher: Broker,
    messages: list[OutgoingMessage],
    *,
    joined: float,
    all_busy: str | None = None,
    lag_after: bool = True,
) -> list[Path]:
    """Three processes share group ``billing``; the first is SIGKILLed once 900 were handled.

    After ``joined`` seconds from all three being ready, ``publisher`` sends
    ``messages``; the two survivors must handle every one, then stop cleanly.
    With ``all_busy``, each process must have handled something before the
    kill (the failure says ``all_busy``); with ``lag_after``, the group's lag
    must be 0 at the end. Returns the three logs (the killed one's first).
    """
    logs = [tmp_path / f"consumer-{i}.log" for i in range(3)]
    processes = [spawn(url, topic, log, sleep=0.01) for log in logs]
    everything = set(range(len(messages)))
    try:
        await until(lambda: ready(logs), within=30)
        await asyncio.sleep(joined)
        await publisher.publish(topic, messages)
        await until(lambda: sum(len(ends(log)) for log in logs) >= 900, within=60)
        if all_busy is not None:
            assert all(ends(log) for log in logs), all_busy
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(timeout=10)
        await until(lambda: {n for log in logs for n, _ in ends(log)} == everything, within=60)
        await asyncio.sleep(0.5)
        stop(processes[1:])
        if lag_after:
            sub = await publisher.subscribe(topic, "billing", prefetch=10)
            assert await total_lag(sub) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    return logs


def assert_the_killed_share_came_back_once(logs: list[Path]) -> None:
    """After :func:`sigkill_one_of_three`: the survivors handled each message once between
    them, and only what the killed process had started came to them again, as attempt 2."""
    killed_started = starts(logs[0])
    survived = [(n, a) for log in logs[1:] for n, a in ends(log)]
    twice = Counter(n for n, _ in survived)
    assert max(twice.values()) == 1, "the survivors handled a message twice between them"
    everywhere = Counter(n for log in logs for n, _ in ends(log))
    duplicates = {n for n, count in everywhere.items() if count > 1}
    assert duplicates <= killed_started, "a duplicate that the killed process never had"
    assert all(a == 2 for n, a in survived if n in killed_started)
    assert {a for _, a in survived} <= {1, 2}


# -- fetching and leases ------------------------------------------------------------


async def keepalive_fetch_takes_nothing_and_does_not_wait(
    url: str, topic: str, opened: Opener
) -> None:
    """``fetch(0, ...)`` returns at once with nothing; what was published stays for a fetch."""
    broker = await opened(url)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        await broker.publish(topic, events(5))
        started = time.monotonic()
        assert await sub.fetch(0, 0) == []
        assert await sub.fetch(0, 5.0) == []
        assert time.monotonic() - started < 0.5
        assert await total_lag(sub) == 5
        assert numbers(await drain(sub)) == [0, 1, 2, 3, 4]
    finally:
        await broker.close()


async def a_slow_member_keeps_its_messages_past_the_lease(
    url: str, topic: str, opened: Opener
) -> None:
    """A member that keeps calling ``fetch(0, 0)`` holds its messages past a 0.6 s lease."""
    url = f"{url}?lease=0.6"
    slow_broker, other_broker = await opened(url), await opened(url)
    try:
        slow = await slow_broker.subscribe(topic, "billing", prefetch=10)
        other = await other_broker.subscribe(topic, "billing", prefetch=10)
        await slow_broker.publish(topic, events(3))
        held = await slow.fetch(10, 1.0)
        assert len(held) == 3

        # The slow member only keeps calling fetch(0, 0), as the runtime does
        # while its handlers run; the other must not take its messages.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            await slow.fetch(0, 0)
            assert await other.fetch(10, 0.1) == []
        await slow.settle(held, [], [])
        assert await other.fetch(10, 0.8) == []
    finally:
        await slow_broker.close()
        await other_broker.close()


# -- refused credentials ------------------------------------------------------------


async def a_wrong_password_fails_the_consumer_without_a_retry_storm(
    url: str, proxy: TcpProxy, redacted: str
) -> None:
    """The consumer of ``url`` (a wrong password, through ``proxy``) keeps trying while
    the server is unreachable, then fails at its refusal and stops connecting.

    ``redacted`` is how the error shows the URL, the password hidden.
    """
    proxy.pause()  # unreachable at start: the consumer keeps trying...
    ms = Millstream(url, reconnect_backoff=0.05)

    @ms.consumer("payments", group="billing")
    async def handle(event: dict[str, int]) -> None:
        pass

    async with ms:
        consumer = ms.consumers["handle"]
        await until(lambda: consumer.state is ConsumerState.RECONNECTING, within=5)
        proxy.resume()  # ...until the server answers, and refuses the password
        await until(lambda: consumer.state is ConsumerState.FAILED, within=5)
        attempts = proxy.accepted
        await asyncio.sleep(1.0)
        assert proxy.accepted == attempts <= 2, "kept connecting after the refusal"
        assert consumer.state is ConsumerState.FAILED
        error = consumer.stats.last_error or ""
        assert "refused the credentials" in error and redacted in error
