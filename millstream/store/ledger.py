"""The idempotency ledger: which messages each group has already handled.

An idempotent consumer records a message's id in the transaction its
handler runs in (see ``handlers.py``), so the record and the handler's
effects commit, or roll back, together. Entries older than
``idempotency_retention`` are pruned by the outbox relay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from millstream.store.base import Store
    from millstream.store.transaction import Transaction

__all__ = ["claim", "prune"]


async def claim(tx: Transaction, group: str, topic: str, message_id: str, now: float) -> bool:
    """Record ``message_id`` of ``topic`` as processed by ``group`` in ``tx``; ``False`` if it was.

    On PostgreSQL a second member inserting the same id waits for the
    first's transaction: if that commits, this returns ``False``.
    """
    inserted = await tx.execute(
        "INSERT INTO millstream_processed (grp, topic, message_id, processed_at) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        group,
        topic,
        message_id,
        now,
    )
    return inserted == 1


async def prune(store: Store, processed_before: float) -> None:
    """Forget the messages processed before ``processed_before``."""
    await store.execute(
        "DELETE FROM millstream_processed WHERE processed_at < $1", processed_before
    )
