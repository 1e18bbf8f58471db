"""Message rows of the SQLite broker file into ``Message``s, whatever another writer put there.

Millstream writes every column with the type the schema names, but SQLite
keeps whatever a writer gives it: another program on the same file may
store an id that is not UTF-8, headers that are not a JSON object, a
publish time that is not a number. Nothing in a row may stop a consumer.

The fast path reads and builds messages as if every row were well formed,
and costs nothing more than that; the few checks it needs raise when a row
is not. Then, and only then, the careful path reads the rows again as
bytes and decodes each field on its own, with a default and one WARNING
(topic, field, value, what was expected) for each field it cannot read.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from itertools import chain
from typing import Any

import orjson

from millstream.message import NO_HEADERS, Message

__all__ = ["json_object", "message_id_of", "messages", "read_rows", "read_text"]

log = logging.getLogger("millstream.brokers")

# Only rows whose every column has the type millstream writes (checked in C, for
# nothing); a row left out sends the whole batch down the careful path.
_MESSAGES = """SELECT seq, id, key, payload, headers, published_at FROM messages
    WHERE seq IN (SELECT value FROM json_each(?)) AND typeof(id) = 'text' AND id <> ''
        AND typeof(key) IN ('text', 'null') AND typeof(payload) = 'blob'
        AND typeof(headers) IN ('blob', 'null') AND typeof(published_at) = 'real'"""
# Every text column as bytes, so undecodable text cannot raise; a number stays a number.
_AS_STORED = """SELECT seq, CAST(id AS BLOB), CASE WHEN key IS NULL THEN NULL
        ELSE CAST(key AS BLOB) END, CAST(payload AS BLOB), CASE WHEN headers IS NULL
        THEN NULL ELSE CAST(headers AS BLOB) END,
        CASE WHEN typeof(published_at) IN ('integer', 'real') THEN published_at
        ELSE CAST(published_at AS BLOB) END
    FROM messages WHERE seq IN (SELECT value FROM json_each(?))"""
_SHOWN = 100


class _Malformed(Exception):
    """A row the fast path cannot take as it is."""


def read_rows(conn: sqlite3.Connection, seqs: list[int]) -> list[Any] | None:
    """The message rows of ``seqs`` as stored, or ``None`` if one holds text that is not UTF-8.

    Cheap enough to run inside the fetch's transaction; ``messages`` decodes after it.
    """
    try:
        return conn.execute(_MESSAGES, (orjson.dumps(seqs),)).fetchall()
    except sqlite3.OperationalError:  # undecodable text; anything else raises again later
        return None


def messages(
    conn: sqlite3.Connection,
    topic: str,
    rows: list[Any] | None,
    attempts: Mapping[int, int],
    token: int,
) -> list[Message]:
    """``rows`` (from ``read_rows``) as messages in publish order, leased with ``token``.

    A row the fast path cannot take is read again as stored, outside the
    fetch's transaction: the rows are leased to the caller, so they stay.
    """
    if rows is not None:
        try:
            return _fast(topic, rows, attempts, token)
        except (_Malformed, orjson.JSONDecodeError, TypeError):
            pass
    stored = conn.execute(_AS_STORED, (orjson.dumps(list(attempts)),)).fetchall()
    stored.sort()
    return [_careful(topic, row, attempts[row[0]], token) for row in stored]


def _fast(topic: str, rows: list[Any], attempts: Mapping[int, int], token: int) -> list[Message]:
    """Messages from well-typed rows; raises unless every headers value is a JSON object of
    strings (``dict.values`` refuses anything but a dict, ``join`` anything but strings)."""
    if len(rows) < len(attempts):
        raise _Malformed
    rows.sort()
    loads = orjson.loads
    messages = [
        Message(
            id=message_id,
            topic=topic,
            payload=payload,
            key=key,
            headers=loads(headers) if headers else NO_HEADERS,
            attempt=attempts[seq],
            published_at=published_at,
            receipt=(seq, token),
        )
        for seq, message_id, key, payload, headers, published_at in rows
    ]
    decoded: list[Any] = [m.headers for m in messages if m.headers is not NO_HEADERS]
    "".join(chain.from_iterable(map(dict.values, decoded)))
    return messages


def _careful(topic: str, row: Any, attempt: int, token: int) -> Message:
    seq, raw_id, raw_key, payload, raw_headers, raw_published = row
    if raw_id:
        message_id = read_text(topic, "id", raw_id)
    else:
        message_id = message_id_of(seq, raw_id)
        _warn(topic, "id", raw_id, f"a message id; using {message_id!r}")
    key = None if raw_key is None else read_text(topic, "key", raw_key)
    if type(raw_published) in (int, float):
        published_at = float(raw_published)
    else:
        published_at = 0.0
        _warn(topic, "published_at", raw_published, "a number of seconds since the epoch")
    return Message(
        id=message_id,
        topic=topic,
        payload=payload or b"",
        key=key,
        headers=_headers(topic, raw_headers),
        attempt=attempt,
        published_at=published_at,
        receipt=(seq, token),
    )


def message_id_of(seq: int, raw: bytes | None) -> str:
    """The id stored, bytes that are not UTF-8 backslash-escaped; none stored: one from ``seq``.

    Either way the same on every redelivery, so the idempotency ledger
    recognises it.
    """
    return raw.decode(errors="backslashreplace") if raw else f"sqlite-{seq}"


def read_text(topic: str, field: str, raw: bytes) -> str:
    """``raw`` as text; bytes that are not UTF-8 come out backslash-escaped (and are logged)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        _warn(topic, field, raw, "UTF-8 text; escaped the bytes that are not")
        return raw.decode(errors="backslashreplace")


def json_object(raw: bytes | None) -> dict[str, Any] | None:
    """``raw`` as a JSON object; ``None`` when it is absent, not JSON or not an object."""
    if not raw:
        return None
    try:
        loaded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _headers(topic: str, raw: bytes | None) -> Mapping[str, str]:
    """Headers stored as a JSON object of strings; what is not is left out (and logged)."""
    loaded = json_object(raw)
    if loaded is None:
        if raw:
            _warn(topic, "headers", raw, "a JSON object of strings; ignored the headers")
        return NO_HEADERS
    headers = {name: value for name, value in loaded.items() if isinstance(value, str)}
    if len(headers) < len(loaded):
        _warn(topic, "headers", raw, "a JSON object of strings; left out the values that are not")
    return headers


def _warn(topic: str, field: str, value: object, expected: str) -> None:
    shown = repr(value)
    if len(shown) > _SHOWN:
        shown = shown[:_SHOWN] + "..."
    log.warning(
        "sqlite: a message of topic %r has a malformed %s %s; expected %s",
        topic, field, shown, expected,
    )  # fmt: skip
