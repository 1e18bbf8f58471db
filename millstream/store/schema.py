"""millstream's own tables, created in every store before the service's schema.

``millstream_processed`` is the idempotency ledger (``ledger.py``): one row
per message a group has handled. ``millstream_outbox`` holds what
transactions published (``outbox_table.py``) until the relay has sent it.
Every statement is ``IF NOT EXISTS``: opening an existing store changes
nothing, except that a column added since it was created is added
(``UPGRADES``; SQLite has no ``ADD COLUMN IF NOT EXISTS``, so the store
looks first).
"""

from __future__ import annotations

__all__ = ["MILLSTREAM_SCHEMA", "UPGRADES"]

UPGRADES: tuple[tuple[str, str, str], ...] = (
    # (table, column, its SQLite type): columns newer than the table's first release
    ("millstream_outbox", "deliver_at", "REAL"),
)

MILLSTREAM_SCHEMA: dict[str, str] = {
    "sqlite": """
CREATE TABLE IF NOT EXISTS millstream_processed (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    processed_at REAL NOT NULL,
    PRIMARY KEY (grp, topic, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS millstream_processed_at ON millstream_processed (processed_at);
CREATE TABLE IF NOT EXISTS millstream_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    msg_key TEXT,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    due_at REAL NOT NULL,
    claimed_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at REAL,
    deliver_at REAL
);
CREATE INDEX IF NOT EXISTS millstream_outbox_due ON millstream_outbox (due_at)
    WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS millstream_outbox_sent ON millstream_outbox (sent_at)
    WHERE sent_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS millstream_outbox_key ON millstream_outbox (topic, msg_key, id)
    WHERE sent_at IS NULL;
""",
    "postgres": """
CREATE TABLE IF NOT EXISTS millstream_processed (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    processed_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (grp, topic, message_id)
);
CREATE INDEX IF NOT EXISTS millstream_processed_at ON millstream_processed (processed_at);
CREATE TABLE IF NOT EXISTS millstream_outbox (
    id BIGSERIAL PRIMARY KEY,
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    msg_key TEXT,
    headers TEXT NOT NULL,
    payload BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    due_at DOUBLE PRECISION NOT NULL,
    claimed_until DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at DOUBLE PRECISION,
    deliver_at DOUBLE PRECISION
);
ALTER TABLE millstream_outbox ADD COLUMN IF NOT EXISTS deliver_at DOUBLE PRECISION;
CREATE INDEX IF NOT EXISTS millstream_outbox_due ON millstream_outbox (due_at)
    WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS millstream_outbox_sent ON millstream_outbox (sent_at)
    WHERE sent_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS millstream_outbox_key ON millstream_outbox (topic, msg_key, id)
    WHERE sent_at IS NULL;
""",
}
