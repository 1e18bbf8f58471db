"""One SQLite broker file shared by connections and processes: cleanup, cuts, reopening."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
import time
from pathlib import Path

import pytest

from millstream.errors import BrokerUnavailable
from millstream.message import Message
from tests.brokers.sqlite_support import TOPIC, drain, opened, outgoing, payloads, url_of


def table_counts(path: Path) -> tuple[int, int]:
    """(messages, deliveries) rows in the broker file, read by an outside connection."""
    with sqlite3.connect(path) as conn:
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        deliveries = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    return messages, deliveries


async def test_two_connections_to_one_file_share_a_group_without_duplicates(
    tmp_path: Path,
) -> None:
    url = url_of(tmp_path / "broker.db")
    async with opened(url) as first, opened(url) as second:
        one = await first.subscribe(TOPIC, "billing", prefetch=10)
        two = await second.subscribe(TOPIC, "billing", prefetch=10)
        await first.publish(TOPIC, outgoing(*(f"m{i}" for i in range(200))))

        seen: list[str] = []
        while len(seen) < 200:
            for member in (one, two):
                batch = await member.fetch(7, 0.5)
                await member.settle(batch, [], [])
                seen.extend(payloads(batch))

        assert sorted(seen) == sorted(f"m{i}" for i in range(200))
        assert (await one.lag()).total == 0


async def test_a_member_that_dies_has_its_messages_redelivered_after_the_lease(
    tmp_path: Path,
) -> None:
    url = url_of(tmp_path / "broker.db", lease=0.5)
    async with opened(url) as doomed, opened(url) as survivor:
        dying = await doomed.subscribe(TOPIC, "billing", prefetch=10)
        living = await survivor.subscribe(TOPIC, "billing", prefetch=10)
        await doomed.publish(TOPIC, outgoing("a", "b", "c"))
        assert payloads(await dying.fetch(10, 1.0)) == ["a", "b", "c"]
        # `dying` is abandoned from here on: no settle, no fetch, no close.

        assert await living.fetch(10, 0.2) == []
        started = time.monotonic()
        redelivered = await living.fetch(10, 2.0)

        assert payloads(redelivered) == ["a", "b", "c"]
        assert [m.attempt for m in redelivered] == [2, 2, 2]
        assert time.monotonic() - started < 1.5
        # The dead member's late ack is ignored: the survivor holds them now.
        await dying.settle(redelivered, [], [])
        assert (await living.lag()).total == 3
        await living.settle(redelivered, [], [])
        assert (await living.lag()).total == 0


@pytest.mark.slow
async def test_messages_published_by_another_process_are_consumed(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    script = textwrap.dedent(
        """
        import asyncio, sys
        from millstream.brokers.sqlite.broker import SqliteBroker
        from millstream.message import OutgoingMessage

        async def main() -> None:
            broker = SqliteBroker.from_url(sys.argv[1])
            await broker.connect()
            for batch in range(5):
                await broker.publish("payments", [
                    OutgoingMessage(payload=f"{batch}-{i}".encode(), headers={"from": "child"})
                    for i in range(20)
                ])
            await broker.close()

        asyncio.run(main())
        """
    )
    async with opened(url_of(path)) as broker:
        subscription = await broker.subscribe(TOPIC, "billing", prefetch=100)
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, url_of(path))
        received: list[Message] = []
        deadline = time.monotonic() + 30
        while len(received) < 100 and time.monotonic() < deadline:
            batch = await subscription.fetch(100, 1.0)
            await subscription.settle(batch, [], [])
            received.extend(batch)
        assert await child.wait() == 0

    assert len(received) == 100
    assert {m.headers["from"] for m in received} == {"child"}
    # Publish order is kept even though the publisher was another process.
    assert payloads(received) == [f"{b}-{i}" for b in range(5) for i in range(20)]


async def test_message_rows_go_once_every_group_is_done_with_them(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    async with opened(url_of(path)) as broker:
        billing = await broker.subscribe(TOPIC, "billing", prefetch=10)
        audit = await broker.subscribe(TOPIC, "audit", prefetch=10)
        # Looking at the dead letters of a group no one consumes must not create
        # it, or it would keep every message of the topic forever.
        assert await (await broker.dead_letters(TOPIC, "nobody")).count() == 0
        await broker.publish(TOPIC, outgoing(*(f"m{i}" for i in range(10))))
        assert table_counts(path) == (10, 20)

        assert len(await drain(billing)) == 10
        assert table_counts(path) == (10, 10)  # audit still needs them

        batch = await audit.fetch(10, 1.0)
        await audit.settle(batch[:9], [], [(batch[9], "poison")])
        assert table_counts(path) == (1, 1)  # a dead letter keeps its payload

        await (await broker.dead_letters(TOPIC, "audit")).purge()
        assert table_counts(path) == (0, 0)


async def test_after_a_cut_everything_is_unavailable_until_connect(tmp_path: Path) -> None:
    async with opened(url_of(tmp_path / "broker.db")) as broker:
        subscription = await broker.subscribe(TOPIC, "billing", prefetch=10)
        await broker.publish(TOPIC, outgoing("a", "b", "c"))
        held = await subscription.fetch(2, 1.0)

        broker.cut()

        with pytest.raises(BrokerUnavailable):
            await broker.publish(TOPIC, outgoing("d"))
        with pytest.raises(BrokerUnavailable):
            await subscription.fetch(10, 0.1)
        with pytest.raises(BrokerUnavailable):
            await subscription.settle(held, [], [])
        with pytest.raises(BrokerUnavailable):
            await broker.subscribe(TOPIC, "billing", prefetch=10)
        with pytest.raises(BrokerUnavailable):
            await broker.dead_letters(TOPIC, "billing")
        await subscription.close()  # after a cut: must not raise

        await broker.connect()
        await broker.connect()  # idempotent
        with pytest.raises(BrokerUnavailable):
            await subscription.fetch(10, 0.1)  # the old member is gone for good
        again = await broker.subscribe(TOPIC, "billing", prefetch=10)
        back = await again.fetch(10, 1.0)

        # What the cut member held is back at once, the lost attempt counted.
        assert [(m.payload, m.attempt) for m in back] == [(b"a", 2), (b"b", 2), (b"c", 1)]
        await again.settle(back, [], [])
        assert (await again.lag()).total == 0


async def test_messages_and_dead_letters_survive_reopening_the_file(tmp_path: Path) -> None:
    url = url_of(tmp_path / "broker.db")
    async with opened(url) as broker:
        # Published before any group exists: kept for the first group.
        await broker.publish(TOPIC, outgoing("a", "b", "c", "d"))
        subscription = await broker.subscribe(TOPIC, "billing", prefetch=10)
        batch = await subscription.fetch(3, 1.0)
        await subscription.settle([batch[0]], [], [(batch[1], "bad amount")])
        # batch[2] is still held when the broker closes: released, not counted.

    async with opened(url) as broker:
        subscription = await broker.subscribe(TOPIC, "billing", prefetch=10)
        rest = await subscription.fetch(10, 1.0)
        assert [(m.payload, m.attempt) for m in rest] == [(b"c", 1), (b"d", 1)]
        letters = await (await broker.dead_letters(TOPIC, "billing")).list()
        assert [(d.payload, d.error, d.attempts) for d in letters] == [(b"b", "bad amount", 1)]


async def test_a_dead_letter_id_never_comes_to_mean_a_later_death(tmp_path: Path) -> None:
    async with opened(url_of(tmp_path / "broker.db")) as broker:
        subscription = await broker.subscribe(TOPIC, "billing", prefetch=10)
        queue = await broker.dead_letters(TOPIC, "billing")
        await broker.publish(TOPIC, outgoing("poison"))
        first = await subscription.fetch(1, 1.0)
        await subscription.settle([], [], [(first[0], "once")])
        [letter] = await queue.list()

        assert await queue.replay([letter.id, letter.id, "not-an-id"]) == 1
        again = await subscription.fetch(1, 1.0)
        assert again[0].attempt == 1
        await subscription.settle([], [], [(again[0], "twice")])

        assert await queue.replay([letter.id]) == 0
        assert await queue.purge([letter.id]) == 0
        [second] = await queue.list()
        assert (second.id != letter.id, second.error) == (True, "twice")
        assert await queue.purge([second.id]) == 1
