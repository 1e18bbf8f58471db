"""The dead letters of the SQLite broker: list, count, replay and purge.

A dead letter is a delivery row in state ``dead``; its id is
``{seq}-{deaths}``, so a repeated replay or purge never touches a letter
that was replayed and has died again since. :class:`SqliteDeadLetters` runs
the queries below on the broker's connection thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence

from millstream.brokers.base import DeadLetter
from millstream.brokers.sqlite.connection import LiveConnection
from millstream.brokers.sqlite.schema import LIVE, find_group, forget, transaction
from millstream.brokers.sqlite.wire import json_object, message_id_of

__all__ = ["SqliteDeadLetters", "count_dead", "list_dead", "purge_dead", "replay_dead"]

# Text columns as bytes: a letter another writer stored with text that is not
# UTF-8 must still be listed (and replayed or purged by its id).
_DEAD_LETTERS = """SELECT d.seq, d.deaths, CAST(m.id AS BLOB),
        CASE WHEN m.key IS NULL THEN NULL ELSE CAST(m.key AS BLOB) END,
        CAST(m.payload AS BLOB), CASE WHEN m.headers IS NULL THEN NULL
        ELSE CAST(m.headers AS BLOB) END, d.attempt, d.error, d.failed_at
    FROM deliveries AS d INDEXED BY deliveries_dead JOIN messages AS m ON m.seq = d.seq
    WHERE d.gid = ? AND d.state = 'dead'
    ORDER BY d.failed_at DESC, d.seq DESC LIMIT ? OFFSET ?"""
_REPLAY = """UPDATE deliveries SET state = 'ready', visible_at = 0, attempt = 0,
    error = NULL, failed_at = NULL WHERE gid = ? AND state = 'dead'"""
_PURGE = "DELETE FROM deliveries WHERE gid = ? AND state = 'dead'"


def list_dead(
    conn: sqlite3.Connection, topic: str, group: str, limit: int, offset: int
) -> list[DeadLetter]:
    """Dead letters of one group, newest first."""
    gid = find_group(conn, topic, group)
    if gid is None:
        return []
    rows = conn.execute(_DEAD_LETTERS, (gid, limit, offset)).fetchall()
    return [
        DeadLetter(
            id=f"{seq}-{deaths}",
            message_id=message_id_of(seq, raw_id),
            topic=topic,
            group=group,
            payload=payload or b"",
            key=None if raw_key is None else raw_key.decode(errors="backslashreplace"),
            headers=json_object(headers) or {},
            attempts=attempt,
            error=error or "",
            failed_at=failed_at,
        )
        for seq, deaths, raw_id, raw_key, payload, headers, attempt, error, failed_at in rows
    ]


def count_dead(conn: sqlite3.Connection, topic: str, group: str) -> int:
    """How many dead letters one group has."""
    gid = find_group(conn, topic, group)
    if gid is None:
        return 0
    row = conn.execute(
        "SELECT count(*) FROM deliveries INDEXED BY deliveries_dead "
        "WHERE gid = ? AND state = 'dead'",
        (gid,),
    ).fetchone()
    return int(row[0])


def replay_dead(conn: sqlite3.Connection, topic: str, group: str, ids: Sequence[str] | None) -> int:
    """Dead letters back to 'ready' with the attempt count restarted."""
    return _dead_letter_change(conn, topic, group, ids, _REPLAY)


def purge_dead(conn: sqlite3.Connection, topic: str, group: str, ids: Sequence[str] | None) -> int:
    """Delete dead letters, and their messages when no other group needs them."""
    return _dead_letter_change(conn, topic, group, ids, _PURGE)


def _dead_letter_change(
    conn: sqlite3.Connection, topic: str, group: str, ids: Sequence[str] | None, sql: str
) -> int:
    with transaction(conn):
        gid = find_group(conn, topic, group)
        if gid is None:
            return 0
        if ids is None:
            rows = conn.execute(f"{sql} RETURNING seq", (gid,)).fetchall()
            seqs = [seq for (seq,) in rows]
        else:
            # The death count in the id keeps a repeated call from touching a
            # letter that was replayed and has died again since.
            seqs = []
            for seq, deaths in _parse_letter_ids(ids):
                row = conn.execute(
                    f"{sql} AND seq = ? AND deaths = ? RETURNING seq", (gid, seq, deaths)
                ).fetchone()
                if row is not None:
                    seqs.append(seq)
        if sql is _PURGE and seqs:
            forget(conn, topic, seqs)
        if sql is _REPLAY and seqs:
            conn.execute(LIVE, (len(seqs), gid))
        return len(seqs)


def _parse_letter_ids(ids: Sequence[str]) -> Iterator[tuple[int, int]]:
    """(seq, deaths) of each well-formed id; anything else cannot be there, so is skipped."""
    for letter_id in dict.fromkeys(ids):
        seq, _, deaths = letter_id.partition("-")
        if seq.isdigit() and deaths.isdigit():
            yield int(seq), int(deaths)


class SqliteDeadLetters:
    """The dead-letter queue of one topic and group in the broker file.

    Looking at a group that does not exist does not create it (a group that
    no one consumes would keep every message of the topic forever).
    """

    def __init__(self, live: LiveConnection, topic: str, group: str) -> None:
        self._live = live
        self._topic = topic
        self._group = group

    async def list(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Newest first."""
        connection = self._live.current()
        return await connection.run(list_dead, self._topic, self._group, limit, offset)

    async def count(self) -> int:
        """How many letters the queue holds."""
        return await self._live.current().run(count_dead, self._topic, self._group)

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        """Back into the group as fresh deliveries (attempt 1); returns how many."""
        connection = self._live.current()
        replayed = await connection.run(replay_dead, self._topic, self._group, ids)
        if replayed:
            self._live.wake(self._topic)
        return replayed

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        """Delete letters for good; returns how many."""
        connection = self._live.current()
        return await connection.run(purge_dead, self._topic, self._group, ids)
