"""What SQLite fetch and lag cost however much is parked or waiting, and what lag counts."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

from millstream.brokers.sqlite.broker import SqliteBroker
from millstream.message import Message
from tests.brokers.sqlite_support import TOPIC, drain, opened, outgoing, payloads, url_of


async def vm_steps(broker: SqliteBroker, operation: Callable[[], Awaitable[object]]) -> int:
    """How much SQLite work ``operation`` does: its VM instructions, in hundreds."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0  # carry on

    def watch(conn: sqlite3.Connection, every: int) -> None:
        conn.set_progress_handler(tick if every else None, every)

    await broker.current().run(watch, 100)
    try:
        await operation()
    finally:
        await broker.current().run(watch, 0)
    return steps


async def test_fetch_cost_does_not_grow_with_parked_retries_or_leases(tmp_path: Path) -> None:
    async with opened(url_of(tmp_path / "broker.db")) as broker:
        member = await broker.subscribe(TOPIC, "billing", prefetch=100)
        other = await broker.subscribe(TOPIC, "billing", prefetch=100)
        await broker.publish("quiet", outgoing(*(f"q{i}" for i in range(20))))
        quiet = await broker.subscribe("quiet", "billing", prefetch=100)
        await broker.publish("quiet", outgoing(*(f"q{i}" for i in range(20))))
        baseline = await vm_steps(broker, lambda: quiet.fetch(10, 0))

        # An outage parks 3000 messages in backoff while another member holds 3000.
        await broker.publish(TOPIC, outgoing(*(f"old{i}" for i in range(6000))))
        parked = await member.fetch(3000, 0)
        await member.settle([], [(m, 600.0) for m in parked], [])
        assert len(await other.fetch(3000, 0)) == 3000
        assert await vm_steps(broker, lambda: member.fetch(10, 0)) <= 5  # idle probe

        await broker.publish(TOPIC, outgoing(*(f"new{i}" for i in range(20))))
        fetched: list[Message] = []

        async def fetch_fresh() -> None:
            fetched.extend(await member.fetch(10, 0))

        cost = await vm_steps(broker, fetch_fresh)
        assert payloads(fetched) == [f"new{i}" for i in range(10)]
        assert cost <= baseline + 5


async def test_lag_costs_the_same_however_long_the_backlog(tmp_path: Path) -> None:
    async with opened(url_of(tmp_path / "broker.db")) as broker:
        subscription = await broker.subscribe(TOPIC, "billing", prefetch=100)
        await broker.publish(TOPIC, outgoing(*(f"m{i}" for i in range(20_000))))
        lag: list[int] = []

        async def probe() -> None:
            lag.append((await subscription.lag()).total)

        assert await vm_steps(broker, probe) <= 1
        assert lag == [20_000]


async def test_lag_counts_waiting_in_flight_and_retrying_but_not_dead(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    async with opened(url_of(path)) as first, opened(url_of(path)) as second:
        # Published before the group exists: the group's first member inherits them.
        await first.publish(TOPIC, outgoing(*(f"m{i}" for i in range(10))))
        one = await first.subscribe(TOPIC, "billing", prefetch=10)
        two = await second.subscribe(TOPIC, "billing", prefetch=10)
        audit = await second.subscribe(TOPIC, "audit", prefetch=10)
        await second.publish(TOPIC, outgoing("m10", "m11"))
        queue = await first.dead_letters(TOPIC, "billing")

        async def lags() -> tuple[int, int]:
            return (await one.lag()).total, (await audit.lag()).total

        assert await lags() == (12, 12)
        batch = await one.fetch(6, 1.0)
        await one.settle(batch[:2], [(batch[2], 30.0), (batch[3], 0.0)], [(batch[4], "bad")])
        assert await lags() == (9, 12)  # two acked, one dead; the retries and the held one count
        held = await two.fetch(3, 1.0)
        await two.close()  # gives back what it held
        await queue.replay()
        assert await lags() == (10, 12)
        await one.settle([batch[5]], [], [])
        rest = await drain(one, timeout=0.1)
        assert {m.payload for m in held} <= {m.payload for m in rest}
        assert await lags() == (1, 12)  # the retry due in 30 s
        await drain(audit, timeout=0.1)
        assert await lags() == (1, 0)
        with sqlite3.connect(path) as conn:
            live = conn.execute(
                "SELECT count(*) FROM deliveries WHERE state <> 'dead' AND gid = ("
                "SELECT gid FROM groups WHERE topic = ? AND name = 'billing')",
                (TOPIC,),
            ).fetchone()[0]
        assert live == 1
