"""Who holds what in the SQLite broker file: joining a group, taking messages, taking over.

Everything here runs on the broker's worker thread, each public function in
one write transaction (see :mod:`millstream.brokers.sqlite.schema` for the
tables). A fetch leases 'ready' deliveries to one member (an owner id,
random per subscription). When a member stops without giving back what it
holds (a crash), its deliveries go back to 'ready' either when their lease
runs out, or at once when a member subscribes under its name; either way
they are marked with the name of the member that held them
(``taken_from``), and the fetch that takes them next counts them as taken
over.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass, field

from millstream.brokers.sqlite import wire as decode
from millstream.brokers.sqlite.schema import EXTEND, group_id, transaction
from millstream.message import Message

__all__ = ["Taken", "join", "take"]

# The planner has no statistics for the partial indexes and would otherwise
# walk the primary key, so the hot queries name their index.
_DUE = "gid = :gid AND state IN ('waiting', 'leased') AND visible_at <= :now"
_PROBE = f"""SELECT EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_ready
        WHERE gid = :gid AND state = 'ready')
    OR EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_due WHERE {_DUE})"""
# Due retries and expired leases become fetchable; the attempt was counted when
# they were taken, and the old holder's receipt no longer matches. An expired
# lease is marked with its holder's name (SET reads the row as it was).
_PROMOTE = f"""UPDATE deliveries INDEXED BY deliveries_due
    SET state = 'ready', lease_owner = NULL, lease_token = NULL,
        taken_from = CASE WHEN state = 'leased' THEN coalesce(
            (SELECT name FROM members WHERE owner = deliveries.lease_owner), '') END
    WHERE {_DUE}"""

# A keyed message waits while another member holds a message with its key
# (every lease left after _PROMOTE is unexpired), so members of a group never
# handle one publish key at once and first deliveries keep publish order. A
# retry is not leased while it waits for its delay, so it blocks no one; once
# due it waits like any other message. taken_from is left as it is, so that
# RETURNING reports it; every way back to 'ready' sets it again.
_TAKE = """UPDATE deliveries
    SET state = 'leased', attempt = attempt + 1, visible_at = :until,
        lease_owner = :owner, lease_token = :token
    WHERE gid = :gid AND seq IN (
        SELECT d.seq FROM deliveries AS d INDEXED BY deliveries_ready
        WHERE d.gid = :gid AND d.state = 'ready'
          AND (d.key IS NULL OR NOT EXISTS (
              SELECT 1 FROM deliveries AS b INDEXED BY deliveries_leased
              WHERE b.gid = :gid AND b.key = d.key AND b.state = 'leased'
                AND b.lease_owner <> :owner))
        ORDER BY d.seq LIMIT :limit)
    RETURNING seq, attempt, taken_from"""

# What a crashed member of this name held: back to 'ready' now, the attempt counted.
_TAKE_BACK = """UPDATE deliveries INDEXED BY deliveries_leased
    SET state = 'ready', visible_at = 0, lease_owner = NULL, lease_token = NULL,
        taken_from = :name
    WHERE gid = :gid AND state = 'leased' AND lease_owner = :previous"""


@dataclass(slots=True)
class Taken:
    """What one fetch leased, and how many of those it took over, by the name of their holder."""

    messages: list[Message] = field(default_factory=list)
    taken_over: Counter[str] | None = None


_NOTHING = Taken()


def join(conn: sqlite3.Connection, topic: str, group: str, owner: int, name: str | None) -> int:
    """Join ``group`` as ``owner``; returns the group id.

    Under a ``name``, the deliveries that the previous owner of that name
    still holds go back to 'ready' at once, marked as taken over: a member
    name is never used by two live members, so that one has stopped.
    """
    with transaction(conn):
        gid = group_id(conn, topic, group)
        if name is None:
            return gid
        row = conn.execute(
            "SELECT owner FROM members WHERE gid = ? AND name = ?", (gid, name)
        ).fetchone()
        if row is not None:
            conn.execute(_TAKE_BACK, {"gid": gid, "previous": row[0], "name": name})
        conn.execute(
            "INSERT OR REPLACE INTO members (owner, gid, name) VALUES (?, ?, ?)", (owner, gid, name)
        )
        return gid


def take(
    conn: sqlite3.Connection,
    topic: str,
    gid: int,
    owner: int,
    token: int,
    limit: int,
    now: float,
    until: float,
    extend_held: bool,
) -> Taken:
    """Lease up to ``limit`` fetchable deliveries to ``owner``, in publish order.

    Reads first without the write lock, so an idle poller does not queue
    behind other processes' writers; ``extend_held`` also pushes out the
    leases ``owner`` already holds, in the same transaction (first, so none
    of them counts as expired).
    """
    if limit <= 0 and not extend_held:
        return _NOTHING
    if not extend_held and not conn.execute(_PROBE, {"gid": gid, "now": now}).fetchone()[0]:
        return _NOTHING
    with transaction(conn):
        if extend_held:
            conn.execute(EXTEND, (until, gid, owner))
        if limit <= 0:
            return _NOTHING
        conn.execute(_PROMOTE, {"gid": gid, "now": now})
        params = {"gid": gid, "owner": owner, "token": token, "until": until, "limit": limit}
        leased = conn.execute(_TAKE, params).fetchall()
        if not leased:
            return _NOTHING
        attempts = {seq: attempt for seq, attempt, _ in leased}
        rows = decode.read_rows(conn, list(attempts))
    holders = [holder for _, _, holder in leased if holder is not None]
    return Taken(
        decode.messages(conn, topic, rows, attempts, token),
        Counter(holders) if holders else None,
    )
