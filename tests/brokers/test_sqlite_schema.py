"""The SQLite broker file's schema: old files upgraded, newer refused, other writers' rows read."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from millstream.brokers.sqlite.broker import SqliteBroker
from millstream.brokers.sqlite.schema import SCHEMA_VERSION
from millstream.errors import ConfigError
from millstream.message import OutgoingMessage
from tests.brokers import sqlite_raw
from tests.brokers.sqlite_support import TOPIC, drain, opened, outgoing, payloads, url_of

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
        # The upgraded file holds a delayed publish back, counted in the backlog.
        await broker.publish(TOPIC, [OutgoingMessage(b"later", deliver_at=time.time() + 600)])
        assert await subscription.fetch(10, 0.1) == []
        assert (await subscription.lag()).total == 2

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
