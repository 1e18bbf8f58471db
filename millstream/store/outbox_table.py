"""The outbox table: messages ``tx.publish`` wrote, claimed and marked by the relay.

A row is written in the transaction that published it, so it exists if and
only if that transaction committed. The relay (``outbox.py``) claims due
rows under a lease, publishes them, then marks them sent, or releases them
with a later due time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from millstream.store.base import Store
    from millstream.store.transaction import Row, Transaction

__all__ = ["OutboxRow", "claim", "mark_sent", "pending", "prune_sent", "release", "write"]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A message written by ``tx.publish``, waiting for the relay."""

    topic: str
    message_id: str
    key: str | None
    headers: dict[str, str]
    payload: bytes
    attempts: int = 0
    deliver_at: float | None = None
    """No consumer gets it before this Unix time (``tx.publish(..., delay=)``)."""


async def write(tx: Transaction, rows: Sequence[OutboxRow], now: float) -> None:
    """Insert ``rows`` in ``tx``, due at once."""
    await tx.executemany(
        "INSERT INTO millstream_outbox "
        "(topic, message_id, msg_key, headers, payload, created_at, due_at, attempts, "
        "deliver_at) VALUES ($1, $2, $3, $4, $5, $6, $6, 0, $7)",
        [
            (
                r.topic,
                r.message_id,
                r.key,
                orjson.dumps(r.headers).decode(),
                r.payload,
                now,
                r.deliver_at,
            )
            for r in rows
        ],
    )


async def claim(
    store: Store, limit: int, now: float, lease: float, *, lock: str, skip_locked: str
) -> list[tuple[int, OutboxRow]]:
    """Up to ``limit`` due, unsent rows, oldest first, leased until ``now + lease``.

    ``lock`` runs first where the database needs it to serialise claims;
    ``skip_locked`` ends the inner SELECT where it can skip rows other
    relays lock. See ``Store.claim_outbox`` for the ordering promise.
    """
    async with store.transaction() as tx:
        if lock:
            await tx.execute(lock)
        rows = await tx.fetch(
            "UPDATE millstream_outbox SET claimed_until = $1, attempts = attempts + 1 "
            "WHERE id IN (SELECT o.id FROM millstream_outbox o WHERE o.sent_at IS NULL "
            "AND o.due_at <= $2 AND (o.claimed_until IS NULL OR o.claimed_until < $2) "
            "AND NOT EXISTS (SELECT 1 FROM millstream_outbox p WHERE p.sent_at IS NULL "
            "AND p.topic = o.topic AND p.msg_key = o.msg_key AND p.id < o.id "
            "AND (p.due_at > $2 OR p.claimed_until >= $2)) "
            f"ORDER BY o.id LIMIT $3{skip_locked}) "
            "RETURNING id, topic, message_id, msg_key, headers, payload, attempts, deliver_at",
            now + lease,
            now,
            limit,
        )
    rows.sort(key=lambda row: int(row["id"]))
    return [(int(row["id"]), _outbox_row(row)) for row in rows]


def _outbox_row(row: Row) -> OutboxRow:
    return OutboxRow(
        row["topic"],
        row["message_id"],
        row["msg_key"],
        orjson.loads(row["headers"]),
        bytes(row["payload"]),
        int(row["attempts"]),
        None if row["deliver_at"] is None else float(row["deliver_at"]),
    )


async def mark_sent(store: Store, ids: Sequence[int], now: float) -> None:
    """Mark the rows ``ids`` published at ``now``."""
    async with store.transaction() as tx:
        await tx.executemany(
            "UPDATE millstream_outbox SET sent_at = $1, claimed_until = NULL WHERE id = $2",
            [(now, row_id) for row_id in ids],
        )


async def release(store: Store, failures: Sequence[tuple[int, float]], error: str) -> None:
    """Release rows for another try, each at its own due time, remembering ``error``."""
    async with store.transaction() as tx:
        await tx.executemany(
            "UPDATE millstream_outbox SET claimed_until = NULL, due_at = $1, last_error = $2 "
            "WHERE id = $3",
            [(due, error, row_id) for row_id, due in failures],
        )


async def prune_sent(store: Store, sent_before: float) -> None:
    """Delete the rows sent before ``sent_before``."""
    await store.execute(
        "DELETE FROM millstream_outbox WHERE sent_at IS NOT NULL AND sent_at < $1",
        sent_before,
    )


async def pending(store: Store) -> int:
    """Rows not yet published."""
    value = await store.fetchval("SELECT COUNT(*) FROM millstream_outbox WHERE sent_at IS NULL")
    return int(value or 0)
