"""The tables of the embedded SQLite broker and the transactions that read and write them.

Everything here is synchronous and runs on the broker's one worker thread
(see :mod:`millstream.brokers.sqlite.broker`); each public function is one
operation of the broker and at most one write transaction.

Four tables::

    messages    seq (publish order) | topic | id | key | payload | headers (orjson) | published_at
                | deliver_at (a delayed publish: its deliveries wait until then; 0 for none)
    groups      gid | topic | name | live (its deliveries that are not dead)
    members     owner | gid | name: the latest owner id of each named member of a group
    deliveries  one row per message per group, keyed (gid, seq):
                state       'ready'    may be fetched now
                            'waiting'  a retry or a delayed publish, fetchable from visible_at
                            'leased'   held by a member until visible_at
                            'dead'     in the dead-letter queue
                visible_at  see state; meaningless for 'ready' and 'dead'
                attempt     deliveries so far (a fetch adds one)
                lease_owner, lease_token   which member holds it, from which fetch
                taken_from  set when it went back to 'ready' because the member that
                            held it stopped (its name, '' if it had none); read by
                            the fetch that takes it next, to count the takeover
                deaths, error, failed_at   dead-letter bookkeeping

Each state has its own partial index, so no query walks rows of another
state: a fetch first turns due retries and expired leases back into 'ready'
(found by time in ``deliveries_due``), then leases 'ready' rows in publish
order (``deliveries_ready``). However many retries are parked or messages in
flight, taking the next fresh message costs the same. ``groups.live`` is
kept in step by every transaction that adds, acks, kills or replays
deliveries, so reading the backlog costs nothing either.

A message row is deleted with the last delivery that refers to it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

import orjson

from millstream.errors import BrokerError, ConfigError
from millstream.message import OutgoingMessage

__all__ = [
    "EXTEND",
    "LIVE",
    "SCHEMA_VERSION",
    "count_live",
    "ensure_group",
    "find_group",
    "forget",
    "group_id",
    "open_database",
    "publish",
    "release",
    "settle",
    "transaction",
]

SCHEMA_VERSION = 4

_SCHEMA = (
    # AUTOINCREMENT so a seq is never reused after its row is deleted: receipts
    # and dead-letter ids name a seq and must never come to mean another message.
    """CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        id TEXT NOT NULL,
        key TEXT,
        payload BLOB NOT NULL,
        headers BLOB,
        published_at REAL NOT NULL,
        deliver_at REAL NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS groups (
        gid INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        name TEXT NOT NULL,
        live INTEGER NOT NULL DEFAULT 0,
        UNIQUE (topic, name))""",
    """CREATE TABLE IF NOT EXISTS deliveries (
        gid INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        key TEXT,
        state TEXT NOT NULL DEFAULT 'ready',
        visible_at REAL NOT NULL DEFAULT 0,
        attempt INTEGER NOT NULL DEFAULT 0,
        lease_owner INTEGER,
        lease_token INTEGER,
        deaths INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        failed_at REAL,
        taken_from TEXT,
        PRIMARY KEY (gid, seq)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS members (
        owner INTEGER PRIMARY KEY,
        gid INTEGER NOT NULL,
        name TEXT NOT NULL,
        UNIQUE (gid, name))""",
    # Fetch takes from here in publish order: nothing but what may be taken now.
    """CREATE INDEX IF NOT EXISTS deliveries_ready
        ON deliveries (gid, seq, key) WHERE state = 'ready'""",
    # What becomes 'ready' with time: retries when due, leases when they run out.
    """CREATE INDEX IF NOT EXISTS deliveries_due
        ON deliveries (gid, visible_at) WHERE state IN ('waiting', 'leased')""",
    # Only what is in flight: the per-key order check, lease extension and release.
    """CREATE INDEX IF NOT EXISTS deliveries_leased
        ON deliveries (gid, key, seq) WHERE state = 'leased'""",
    """CREATE INDEX IF NOT EXISTS deliveries_dead
        ON deliveries (gid, failed_at, seq) WHERE state = 'dead'""",
)

EXTEND = """UPDATE deliveries INDEXED BY deliveries_leased SET visible_at = ?
    WHERE gid = ? AND state = 'leased' AND lease_owner = ?"""

# Settling is guarded by owner and token: a receipt whose lease expired and was
# taken by another member no longer matches, so it is ignored.
_HELD = "gid = ? AND seq = ? AND state = 'leased' AND lease_owner = ? AND lease_token = ?"
_ACK = f"DELETE FROM deliveries WHERE {_HELD}"
_RETRY = f"""UPDATE deliveries SET state = ?, visible_at = ?,
    lease_owner = NULL, lease_token = NULL, taken_from = NULL WHERE {_HELD}"""
_DEAD = f"""UPDATE deliveries SET state = 'dead', visible_at = 0, lease_owner = NULL,
    lease_token = NULL, taken_from = NULL, deaths = deaths + 1, error = ?, failed_at = ?
    WHERE {_HELD}"""

_RELEASE = """UPDATE deliveries INDEXED BY deliveries_leased
    SET state = 'ready', visible_at = 0, attempt = attempt - ?,
        lease_owner = NULL, lease_token = NULL, taken_from = NULL
    WHERE gid = ? AND state = 'leased' AND lease_owner = ?"""

# A message goes once no group of its topic has a delivery of it left.
_FORGET = """DELETE FROM messages WHERE seq IN (SELECT value FROM json_each(?))
    AND NOT EXISTS (SELECT 1 FROM deliveries AS d
        WHERE d.gid IN (SELECT gid FROM groups WHERE topic = ?) AND d.seq = messages.seq)"""

# groups.live moves with every delivery that is added, acked, killed or replayed.
LIVE = "UPDATE groups SET live = live + ? WHERE gid = ?"
_LIVE_TOPIC = "UPDATE groups SET live = live + ? WHERE topic = ?"

_INSERT = """INSERT INTO messages (topic, id, key, payload, headers, published_at, deliver_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)"""
# A delayed publish's deliveries wait as a retry does, until its deliver_at.
_DELIVERY = """m.seq, m.key, CASE WHEN m.deliver_at > :now THEN 'waiting' ELSE 'ready' END,
    m.deliver_at"""
_FAN_OUT = f"""INSERT INTO deliveries (gid, seq, key, state, visible_at)
    SELECT g.gid, {_DELIVERY} FROM messages AS m, groups AS g
    WHERE m.seq > :after AND g.topic = :topic"""
_INHERIT = f"""INSERT INTO deliveries (gid, seq, key, state, visible_at)
    SELECT :gid, {_DELIVERY} FROM messages AS m WHERE m.topic = :topic"""


def open_database(path: str, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    """Open (creating if needed) the broker file in WAL mode; call on the worker thread."""
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, cached_statements=64)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise BrokerError(f"{path}: SQLite refused WAL mode ({mode}); use a local disk")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA temp_store = MEMORY")
        # Bound the WAL file after a burst instead of keeping its high-water size.
        conn.execute("PRAGMA journal_size_limit = 67108864")
        with transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"broker file {path!r} has schema version {version}, newer than this "
                    f"millstream understands ({SCHEMA_VERSION}); upgrade millstream, or "
                    "point the broker URL at another file"
                )
            if version == 1:
                _migrate_from_1(conn, time.time())
            if version in (1, 2):
                conn.execute("ALTER TABLE deliveries ADD COLUMN taken_from TEXT")
            if version in (1, 2, 3):
                conn.execute("ALTER TABLE messages ADD COLUMN deliver_at REAL NOT NULL DEFAULT 0")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate_from_1(conn: sqlite3.Connection, now: float) -> None:
    """Version 1 kept retries not yet due as 'ready' rows and counted the backlog each time.

    Runs in the opening transaction, so the file is either all old or all
    new. Stop the processes of the old version first: their fetches fail
    (their index is gone), but their publishes would be missing from the
    backlog that ``lag`` reports.
    """
    conn.execute("DROP INDEX IF EXISTS deliveries_live")
    conn.execute(
        "UPDATE deliveries SET state = 'waiting' WHERE state = 'ready' AND visible_at > ?", (now,)
    )
    conn.execute("ALTER TABLE groups ADD COLUMN live INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        "UPDATE groups SET live = (SELECT count(*) FROM deliveries AS d "
        "WHERE d.gid = groups.gid AND d.state <> 'dead')"
    )


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction; ``IMMEDIATE`` takes the write lock up front so two
    processes never both read and then fail to upgrade."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def publish(conn: sqlite3.Connection, topic: str, messages: Sequence[OutgoingMessage]) -> None:
    """Store ``messages`` and give each existing group of ``topic`` a delivery of each."""
    rows = [
        (
            topic,
            m.id,
            m.key,
            m.payload,
            orjson.dumps(m.headers) if m.headers else None,
            m.published_at,
            m.deliver_at or 0.0,
        )
        for m in messages
    ]
    with transaction(conn):
        before = conn.execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()[0]
        conn.executemany(_INSERT, rows)
        conn.execute(_FAN_OUT, {"after": before, "topic": topic, "now": time.time()})
        conn.execute(_LIVE_TOPIC, (len(rows), topic))


def find_group(conn: sqlite3.Connection, topic: str, group: str) -> int | None:
    """The id of an existing group, without creating it."""
    row = conn.execute("SELECT gid FROM groups WHERE topic = ? AND name = ?", (topic, group))
    found = row.fetchone()
    return None if found is None else int(found[0])


def ensure_group(conn: sqlite3.Connection, topic: str, group: str) -> int:
    """The group's id; a new group gets every message of the topic still retained."""
    with transaction(conn):
        return group_id(conn, topic, group)


def group_id(conn: sqlite3.Connection, topic: str, group: str) -> int:
    """``ensure_group`` inside a transaction the caller holds."""
    gid = find_group(conn, topic, group)
    if gid is not None:
        return gid
    cursor = conn.execute("INSERT INTO groups (topic, name) VALUES (?, ?)", (topic, group))
    gid = int(cursor.lastrowid or 0)
    inherited = conn.execute(_INHERIT, {"gid": gid, "topic": topic, "now": time.time()}).rowcount
    conn.execute(LIVE, (inherited, gid))
    return gid


def settle(
    conn: sqlite3.Connection,
    topic: str,
    gid: int,
    owner: int,
    acks: Sequence[tuple[int, int]],
    requeues: Sequence[tuple[int, int, float]],
    deads: Sequence[tuple[int, int, str]],
    now: float,
    extend_until: float | None,
) -> None:
    """Apply a batch of outcomes, given as (seq, token, ...), in one transaction."""
    with transaction(conn):
        gone = 0
        if acks:
            gone += conn.executemany(
                _ACK, [(gid, seq, owner, token) for seq, token in acks]
            ).rowcount
            forget(conn, topic, [seq for seq, _ in acks])
        if requeues:
            conn.executemany(
                _RETRY,
                [
                    (_retry_state(delay), now + max(0.0, delay), gid, seq, owner, token)
                    for seq, token, delay in requeues
                ],
            )
        if deads:
            gone += conn.executemany(
                _DEAD, [(error, now, gid, seq, owner, token) for seq, token, error in deads]
            ).rowcount
        if gone:
            conn.execute(LIVE, (-gone, gid))
        if extend_until is not None:
            conn.execute(EXTEND, (extend_until, gid, owner))


def _retry_state(delay: float) -> str:
    return "waiting" if delay > 0 else "ready"


def release(
    conn: sqlite3.Connection, members: Sequence[tuple[int, int]], *, count_attempt: bool
) -> int:
    """Make what each (gid, owner) holds fetchable again; returns how many went back.

    A member that closes gives its messages back uncounted; one whose
    connection was lost counts the attempt, as if its lease had run out.
    """
    undo = 0 if count_attempt else 1
    with transaction(conn):
        before = conn.total_changes
        conn.executemany(_RELEASE, [(undo, gid, owner) for gid, owner in members])
        return conn.total_changes - before


def count_live(conn: sqlite3.Connection, gid: int) -> int:
    """The group's deliveries not yet acked and not dead: one row read, however many."""
    row = conn.execute("SELECT live FROM groups WHERE gid = ?", (gid,)).fetchone()
    return 0 if row is None else int(row[0])


def forget(conn: sqlite3.Connection, topic: str, seqs: Sequence[int]) -> None:
    conn.execute(_FORGET, (orjson.dumps(list(seqs)), topic))
