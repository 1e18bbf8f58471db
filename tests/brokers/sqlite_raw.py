"""Messages written into a SQLite broker file by another program, with sqlite3 alone.

What millstream reads must not depend on millstream having written it:
these rows carry metadata of the wrong type, text that is not UTF-8, or
none of millstream's metadata at all. Each row is fanned out to the
topic's groups as the broker's own publish does.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_COLUMNS = ("id", "key", "payload", "headers", "published_at")


@dataclass(frozen=True)
class RawRow:
    """One message row: ``field`` set to ``value`` (stored as TEXT when ``as_text``)."""

    field: str
    shown: str
    value: Any
    as_text: bool = False


MALFORMED = [
    RawRow("id", "b'\\xff\\xfe-id' stored as TEXT (not UTF-8)", b"\xff\xfe-id", as_text=True),
    RawRow("id", "'' (no id)", ""),
    RawRow("id", "b'\\x00\\x01' stored as BLOB", b"\x00\x01"),
    RawRow("key", "b'k\\xff' stored as TEXT (not UTF-8)", b"k\xff", as_text=True),
    RawRow("key", "b'\\xfe' stored as BLOB", b"\xfe"),
    RawRow("headers", "b'\\x00not json'", b"\x00not json"),
    RawRow("headers", "b'[1, 2]' (a JSON array)", b"[1, 2]"),
    RawRow("headers", 'b\'{"a": 1, "b": "ok"}\' (a value not a string)', b'{"a": 1, "b": "ok"}'),
    RawRow("headers", "b'{\\xff}' stored as TEXT (not UTF-8)", b"{\xff}", as_text=True),
    RawRow("published_at", "'yesterday'", "yesterday"),
    RawRow("payload", "stored as TEXT", None),
]


def insert(path: Path, topic: str, rows: list[dict[str, tuple[str, Any]]]) -> None:
    """Insert message rows given as {column: (SQL expression, parameter)}; fan them out."""
    with sqlite3.connect(path, timeout=5, isolation_level=None) as conn:
        conn.execute("BEGIN IMMEDIATE")
        before = conn.execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()[0]
        for row in rows:
            expressions = ", ".join(row[column][0] for column in _COLUMNS)
            conn.execute(
                f"INSERT INTO messages (topic, {', '.join(_COLUMNS)}) VALUES (?, {expressions})",
                (topic, *(row[column][1] for column in _COLUMNS)),
            )
        conn.execute(
            "INSERT INTO deliveries (gid, seq, key) SELECT g.gid, m.seq, m.key "
            "FROM messages AS m, groups AS g WHERE m.seq > ? AND g.topic = ?",
            (before, topic),
        )
        conn.execute("UPDATE groups SET live = live + ? WHERE topic = ?", (len(rows), topic))
        conn.execute("COMMIT")


def plain(payload: bytes) -> dict[str, tuple[str, Any]]:
    """A well-formed row, as millstream writes one."""
    return {
        "id": ("?", uuid.uuid4().hex),
        "key": ("?", None),
        "payload": ("?", payload),
        "headers": ("?", None),
        "published_at": ("?", time.time()),
    }


def malformed(path: Path, topic: str) -> list[tuple[RawRow, bytes]]:
    """One row per entry of ``MALFORMED``, in that order, with the payload each carries."""
    rows, sent = [], []
    for n, case in enumerate(MALFORMED):
        payload = b'{"case": %d}' % n
        row = plain(payload)
        if case.field == "payload":
            row["payload"] = ("?", payload.decode())
        else:
            row[case.field] = ("CAST(? AS TEXT)" if case.as_text else "?", case.value)
        rows.append(row)
        sent.append((case, payload))
    insert(path, topic, rows)
    return sent


def foreign(path: Path, topic: str, payload: bytes) -> None:
    """A message from a producer that is not millstream: no id, no headers, no key."""
    row = plain(payload)
    row["id"] = ("?", "")
    insert(path, topic, [row])
