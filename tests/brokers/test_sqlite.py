"""The SQLite broker beyond the shared conformance suite: one file shared by
several connections and processes, durability, cleanup, leases and URLs."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from millstream.brokers import connect
from millstream.brokers.sqlite.broker import SqliteBroker, SqliteSubscription
from millstream.brokers.sqlite.schema import SCHEMA_VERSION
from millstream.errors import BrokerUnavailable, ConfigError
from millstream.message import Message, OutgoingMessage
from tests.brokers import sqlite_raw

TOPIC = "payments"


def url_of(path: Path, **params: object) -> str:
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[SqliteBroker]:
    broker = SqliteBroker.from_url(url)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()


def outgoing(*payloads: str, key: str | None = None) -> list[OutgoingMessage]:
    return [OutgoingMessage(payload=p.encode(), key=key) for p in payloads]


def payloads(messages: list[Message]) -> list[str]:
    return [m.payload.decode() for m in messages]


async def drain(subscription: SqliteSubscription, *, timeout: float = 0.2) -> list[Message]:
    """Fetch until a fetch comes back empty, acking everything."""
    taken: list[Message] = []
    while batch := await subscription.fetch(100, timeout):
        await subscription.settle(batch, [], [])
        taken.extend(batch)
    return taken


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


async def test_a_key_leased_by_another_live_member_holds_its_followers(tmp_path: Path) -> None:
    url = url_of(tmp_path / "broker.db")
    async with opened(url) as first, opened(url) as second:
        one = await first.subscribe(TOPIC, "billing", prefetch=10)
        two = await second.subscribe(TOPIC, "billing", prefetch=10)
        await first.publish(TOPIC, outgoing("a1", "a2", key="order-a"))
        await first.publish(TOPIC, outgoing("b1", key="order-b"))
        await first.publish(TOPIC, outgoing("a3", key="order-a"))

        head = await one.fetch(1, 1.0)
        assert payloads(head) == ["a1"]
        # a2 and a3 wait while another member holds a1; other keys need not.
        assert payloads(await two.fetch(10, 0.2)) == ["b1"]
        assert await two.fetch(10, 0.1) == []
        # The holder itself may take them: within a member the runtime orders by key.
        assert payloads(await one.fetch(10, 0.2)) == ["a2", "a3"]


async def test_a_delayed_retry_does_not_hold_back_later_messages_of_its_key(
    tmp_path: Path,
) -> None:
    url = url_of(tmp_path / "broker.db")
    async with opened(url) as first, opened(url) as second:
        one = await first.subscribe(TOPIC, "billing", prefetch=10)
        two = await second.subscribe(TOPIC, "billing", prefetch=10)
        await first.publish(TOPIC, outgoing("a1", "a2", "a3", key="order-a"))
        head = await one.fetch(1, 1.0)

        # Per-key order holds among first deliveries; a retry may be overtaken.
        await one.settle([], [(head[0], 0.3)], [])
        later = await two.fetch(10, 1.0)
        assert payloads(later) == ["a2", "a3"]

        # Once due, the retry still waits while another member holds its key.
        await asyncio.sleep(0.4)
        assert await one.fetch(10, 0.1) == []
        await two.settle(later, [], [])
        assert [(m.payload, m.attempt) for m in await one.fetch(10, 1.0)] == [(b"a1", 2)]


async def test_a_key_held_by_a_member_whose_lease_ran_out_is_free(tmp_path: Path) -> None:
    url = url_of(tmp_path / "broker.db", lease=0.3)
    async with opened(url) as doomed, opened(url) as survivor:
        dying = await doomed.subscribe(TOPIC, "billing", prefetch=10)
        living = await survivor.subscribe(TOPIC, "billing", prefetch=10)
        await doomed.publish(TOPIC, outgoing("a1", "a2", key="order-a"))
        assert payloads(await dying.fetch(1, 1.0)) == ["a1"]

        assert await living.fetch(10, 0.1) == []
        back = await living.fetch(10, 2.0)
        assert [(m.payload, m.attempt) for m in back] == [(b"a1", 2), (b"a2", 1)]


@pytest.mark.parametrize("keep_fetching", [10, 0], ids=["fetch", "fetch-nothing"])
async def test_lease_is_extended_while_the_member_keeps_fetching(
    tmp_path: Path, keep_fetching: int
) -> None:
    url = url_of(tmp_path / "broker.db", lease=0.5)
    async with opened(url) as slow_side, opened(url) as other_side:
        slow = await slow_side.subscribe(TOPIC, "billing", prefetch=10)
        other = await other_side.subscribe(TOPIC, "billing", prefetch=10)
        await slow_side.publish(TOPIC, outgoing("x", "y"))
        held = await slow.fetch(10, 1.0)
        assert payloads(held) == ["x", "y"]

        # A slow handler runs for four lease periods; the runtime keeps fetching.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert await slow.fetch(keep_fetching, 0.1) == []
            assert await other.fetch(10, 0.0) == []

        await slow.settle(held, [], [])
        assert (await slow.lag()).total == 0


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


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://x", "has no path"),
        ("sqlite://", "has no path"),
        ("sqlite:///", "has no path"),
        ("sqlite://host/broker.db", "has no path"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite:///./data/", "names a directory"),
        ("sqlite:///./b.db?lease=soon", "lease='soon'"),
        ("sqlite:///./b.db?lease=0", "lease='0'"),
        ("sqlite:///./b.db?synchronous=OFF", "synchronous='OFF'"),
        ("sqlite:///./b.db?leese=5", "unknown parameter(s) leese"),
    ],
)
def test_bad_urls_say_what_is_wrong_and_what_is_expected(url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        connect(url)
    assert expected in str(raised.value)
    assert repr(url) in str(raised.value)
    assert "sqlite:///" in str(raised.value).replace(repr(url), "")


async def test_relative_and_absolute_paths_create_their_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = connect("sqlite:///./.millstream/nested/broker.db?lease=5&synchronous=full")
    absolute = connect(f"sqlite:///{tmp_path}/elsewhere/broker.db")
    assert absolute.url == f"sqlite:////{str(tmp_path).lstrip('/')}/elsewhere/broker.db"
    for broker in (relative, absolute):
        await broker.connect()
        await broker.publish(TOPIC, outgoing("a"))
        await broker.close()
    assert (tmp_path / ".millstream" / "nested" / "broker.db").is_file()
    assert (tmp_path / "elsewhere" / "broker.db").is_file()


async def test_a_path_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a directory")
    broker = connect(url_of(tmp_path / "taken" / "broker.db"))
    with pytest.raises(ConfigError, match="cannot create directory"):
        await broker.connect()
    await broker.close()


async def test_connect_reopens_the_file_after_the_connection_failed(tmp_path: Path) -> None:
    async with opened(url_of(tmp_path / "broker.db")) as broker:
        subscription = await broker.subscribe(TOPIC, "billing", prefetch=10)
        await broker.publish(TOPIC, outgoing("a", "b"))
        held = await subscription.fetch(1, 1.0)

        # The file turns read-only under the open connection, as after a remount.
        await broker.current().run(lambda conn: conn.execute("PRAGMA query_only = ON"))
        with pytest.raises(BrokerUnavailable, match="readonly"):
            await broker.publish(TOPIC, outgoing("c"))
        with pytest.raises(BrokerUnavailable):
            await subscription.fetch(10, 0.1)  # the member went with its connection

        await broker.connect()  # the supervisor's reconnect opens the file afresh
        await broker.publish(TOPIC, outgoing("c"))
        with pytest.raises(BrokerUnavailable):
            await subscription.settle(held, [], [])
        again = await broker.subscribe(TOPIC, "billing", prefetch=10)
        back = await again.fetch(10, 1.0)
        # As after a cut: what the failed member held is back, the attempt counted.
        assert [(m.payload, m.attempt) for m in back] == [(b"a", 2), (b"b", 1), (b"c", 1)]


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


# The broker file as millstream wrote it before retries and leases had their
# own states (schema version 1), kept here verbatim to test the upgrade.
VERSION_1 = """
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, id TEXT NOT NULL, key TEXT,
    payload BLOB NOT NULL, headers BLOB, published_at REAL NOT NULL);
CREATE TABLE groups (
    gid INTEGER PRIMARY KEY, topic TEXT NOT NULL, name TEXT NOT NULL, UNIQUE (topic, name));
CREATE TABLE deliveries (
    gid INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT,
    state TEXT NOT NULL DEFAULT 'ready', visible_at REAL NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0, lease_owner INTEGER, lease_token INTEGER,
    deaths INTEGER NOT NULL DEFAULT 0, error TEXT, failed_at REAL,
    PRIMARY KEY (gid, seq)) WITHOUT ROWID;
CREATE INDEX deliveries_live ON deliveries (gid, seq, visible_at) WHERE state <> 'dead';
CREATE INDEX deliveries_leased ON deliveries (gid, key, seq) WHERE state = 'leased';
CREATE INDEX deliveries_dead ON deliveries (gid, failed_at, seq) WHERE state = 'dead';
PRAGMA user_version = 1;
"""


async def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    now = time.time()
    with sqlite3.connect(path) as conn:
        conn.executescript(VERSION_1)
        conn.execute("INSERT INTO groups VALUES (1, ?, 'billing')", (TOPIC,))
        for seq, name in enumerate(["fresh", "backing-off", "expired", "dead"], start=1):
            conn.execute(
                "INSERT INTO messages VALUES (?, ?, ?, NULL, ?, NULL, ?)",
                (seq, TOPIC, f"id-{seq}", name.encode(), now),
            )
        conn.executemany(
            "INSERT INTO deliveries (gid, seq, state, visible_at, attempt, lease_owner, "
            "lease_token, deaths, error, failed_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (1, "ready", 0, 0, None, None, 0, None, None),
                (2, "ready", now + 600, 1, None, None, 0, None, None),  # a retry not yet due
                (3, "leased", now - 1, 1, 7, 1, 0, None, None),  # its member died
                (4, "dead", 0, 3, None, None, 1, "poison", now),
            ],
        )

    async with opened(url_of(path)) as broker:
        subscription = await broker.subscribe(TOPIC, "billing", prefetch=10)
        assert (await subscription.lag()).total == 3
        taken = await subscription.fetch(10, 0.5)
        assert [(m.payload, m.attempt) for m in taken] == [(b"fresh", 1), (b"expired", 2)]
        await subscription.settle(taken, [], [])
        assert (await subscription.lag()).total == 1  # the retry, due in ten minutes
        letters = await (await broker.dead_letters(TOPIC, "billing")).list()
        assert [(d.payload, d.error, d.attempts) for d in letters] == [(b"dead", "poison", 3)]

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT state FROM deliveries WHERE seq = 2").fetchall() == [
            ("waiting",)
        ]


async def test_a_file_from_a_newer_millstream_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    broker = SqliteBroker.from_url(url_of(path))
    with pytest.raises(ConfigError, match="upgrade millstream") as raised:
        await broker.connect()
    assert str(path) in str(raised.value)
    await broker.close()


# -- members by name, takeovers, what other writers put in the file --------------


async def test_a_member_subscribing_under_a_crashed_members_name_takes_its_messages_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = url_of(tmp_path / "broker.db")  # the default lease: 30 s
    async with opened(url) as crashed, opened(url) as restarted:
        before = await crashed.subscribe(TOPIC, "billing", prefetch=10, member="web-1.charge")
        await crashed.publish(TOPIC, outgoing("a", "b", "c"))
        assert payloads(await before.fetch(10, 1.0)) == ["a", "b", "c"]
        crashed.cut()  # the process died: nothing released
        unnamed = await restarted.subscribe(TOPIC, "billing", prefetch=10)
        assert await unnamed.fetch(10, 0.2) == []  # held until the lease runs out
        await unnamed.close()

        started = time.monotonic()
        after = await restarted.subscribe(TOPIC, "billing", prefetch=10, member="web-1.charge")
        back = await after.fetch(10, 1.0)
        seconds = time.monotonic() - started

        print(f"sqlite takeover by name: {len(back)} message(s) in {seconds:.3f}s (lease 30s)")
        assert [(m.payload, m.attempt) for m in back] == [(b"a", 2), (b"b", 2), (b"c", 2)]
        assert seconds < 1.0
        assert after.taken_over == 3
        lines = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
        assert lines == [
            f"sqlite: member web-1.charge took over 3 message(s) of {TOPIC}/billing held by "
            "web-1.charge, which stopped without releasing them (its lease of 30s ran out, or "
            "its name subscribed again)"
        ]
        await after.settle(back, [], [])
        assert (await after.lag()).total == 0


async def test_messages_of_an_expired_lease_count_as_taken_over_once_per_fetch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = url_of(tmp_path / "broker.db", lease=0.3)
    async with opened(url) as doomed, opened(url) as survivor:
        dying = await doomed.subscribe(TOPIC, "billing", prefetch=10, member="web-3.charge")
        nameless = await doomed.subscribe(TOPIC, "billing", prefetch=10)
        living = await survivor.subscribe(TOPIC, "billing", prefetch=10, member="web-1.charge")
        await doomed.publish(TOPIC, outgoing("a", "b", "c", "d", "e", "f"))
        assert payloads(await dying.fetch(3, 1.0)) == ["a", "b", "c"]
        assert payloads(await nameless.fetch(1, 1.0)) == ["d"]
        # Both are abandoned from here on: no settle, no fetch, no close.
        fresh = await living.fetch(10, 0.1)
        assert (payloads(fresh), living.taken_over) == (["e", "f"], 0)
        await living.settle(fresh, [], [])

        back = await living.fetch(10, 2.0)
        assert payloads(back) == ["a", "b", "c", "d"]
        await living.settle(back, [], [])
        assert await living.fetch(10, 0.5) == []

        assert living.taken_over == 4
        lines = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
        assert len(lines) == 1 and lines[0].startswith(
            f"sqlite: member web-1.charge took over 4 message(s) of {TOPIC}/billing held by "
            "web-3.charge (3), an unnamed member (1), which stopped"
        )


async def test_a_taken_over_message_retried_or_given_back_is_no_takeover_again(
    tmp_path: Path,
) -> None:
    async with opened(url_of(tmp_path / "broker.db", lease=0.3)) as broker:
        stopped = await broker.subscribe(TOPIC, "billing", prefetch=10, member="m1")
        heir = await broker.subscribe(TOPIC, "billing", prefetch=10, member="m2")
        await broker.publish(TOPIC, outgoing("a", "b"))
        assert len(await stopped.fetch(2, 1.0)) == 2  # then it stops calling
        a, _ = await heir.fetch(2, 2.0)
        assert heir.taken_over == 2
        await heir.settle([], [(a, 0.0)], [])  # a retry, due now
        await heir.close()  # b is given back
        third = await broker.subscribe(TOPIC, "billing", prefetch=10, member="m3")
        again = await third.fetch(10, 1.0)
        assert [(m.payload, m.attempt) for m in again] == [(b"a", 3), (b"b", 2)]
        assert third.taken_over == 0


async def test_what_another_writer_stores_never_stops_a_consumer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows written with sqlite3 alone: wrong types, text that is not UTF-8, no id at all.

    Each is delivered with what could be read and a default for the rest
    (one warning per field naming topic, field and value), under an id that
    stays the same on every redelivery; the well-formed messages after them
    go through as usual.
    """
    path = tmp_path / "broker.db"
    async with opened(url_of(path)) as broker:
        subscription = await broker.subscribe(TOPIC, "billing", prefetch=100)
        sent = await asyncio.to_thread(sqlite_raw.malformed, path, TOPIC)
        await asyncio.to_thread(sqlite_raw.foreign, path, TOPIC, b"foreign")
        await broker.publish(TOPIC, outgoing(*(f"m{i}" for i in range(100))))

        first = await subscription.fetch(12, 1.0)
        assert [m.payload for m in first] == [payload for _, payload in sent] + [b"foreign"]
        by_case = {case.shown: m for (case, _), m in zip(sent, first, strict=False)}
        ids = [m.id for m in first]
        assert ids[0] == "\\xff\\xfe-id" and ids[1].startswith("sqlite-") and ids[-1] != ids[1]
        assert ids[-1].startswith("sqlite-")
        assert [m.key for m in first[3:5]] == ["k\\xff", "\\xfe"]
        assert [dict(m.headers) for m in first[5:9]] == [{}, {}, {"b": "ok"}, {}]
        assert by_case["'yesterday'"].published_at == 0.0
        assert all(type(m.payload) is bytes and type(m.published_at) is float for m in first)
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        for field, shown in [
            ("id", "b'\\xff\\xfe-id'"),
            ("id", "b''"),
            ("key", "b'k\\xff'"),
            ("headers", "b'[1, 2]'"),
            ("headers", 'b\'{"a": 1, "b": "ok"}\''),
            ("published_at", "b'yesterday'"),
        ]:
            expected = f"sqlite: a message of topic {TOPIC!r} has a malformed {field} {shown};"
            assert any(line.startswith(expected) for line in warned), (expected, warned)

        # Redelivered, each keeps its id; one of them dead-letters and can be listed.
        await subscription.settle([], [(m, 0.0) for m in first[1:]], [(first[0], "poison")])
        again = await subscription.fetch(11, 1.0)
        assert [m.id for m in again] == ids[1:]
        await subscription.settle(again, [], [])
        letters = await (await broker.dead_letters(TOPIC, "billing")).list()
        assert [(d.message_id, d.error) for d in letters] == [("\\xff\\xfe-id", "poison")]

        rest = await drain(subscription)
        assert payloads(rest) == [f"m{i}" for i in range(100)]
