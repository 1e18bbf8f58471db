"""How millstream lays out a topic and a group in Redis, and how a message is a stream entry.

Keys of topic ``T`` and group ``G``::

    T                the topic: one stream shared by every group (XGROUP per group)
    T:retry:G        G's retries and released messages, read with T in one XREADGROUP
    T:delayed:G      G's retries waiting for their time: a sorted set by due time
    T:dlq:G          G's dead letters: a stream

A message is one entry with the fields ``id``, ``published_at``, ``payload``
and, when set, ``key`` and ``headers`` (a JSON object). Entries of the retry
stream also carry ``attempts``: the deliveries the message had before this
entry, so a delivery's attempt is ``attempts`` plus Redis's own delivery
count. Entries written by other tools (no ``id``) are read too: the entry id
stands in for the message id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from millstream.brokers.base import DeadLetter
from millstream.message import NO_HEADERS, Message, OutgoingMessage

__all__ = ["RETRY", "TOPIC", "Keys", "dead_letter", "encode", "message", "valid_ids"]

# Which stream of a group a delivery came from; part of its receipt.
TOPIC, RETRY = 0, 1

_ENTRY_ID = re.compile(r"\d+-\d+")


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis keys of one topic and group."""

    topic: str
    group: str

    @property
    def stream(self) -> bytes:
        return self.topic.encode()

    @property
    def retry(self) -> bytes:
        return f"{self.topic}:retry:{self.group}".encode()

    @property
    def delayed(self) -> bytes:
        return f"{self.topic}:delayed:{self.group}".encode()

    @property
    def dlq(self) -> bytes:
        return f"{self.topic}:dlq:{self.group}".encode()


def encode(out: OutgoingMessage) -> list[bytes | str]:
    """The fields of the stream entry for ``out``, ready for XADD."""
    fields: list[bytes | str] = [
        b"id",
        out.id,
        b"published_at",
        repr(out.published_at),
        b"payload",
        out.payload,
    ]
    if out.key is not None:
        fields += (b"key", out.key)
    if out.headers:
        fields += (b"headers", orjson.dumps(out.headers))
    return fields


def messages(topic: str, source: int, entries: list[list[Any]]) -> list[Message]:
    """First deliveries of raw XREADGROUP entries (``[id, [field, value, ...]]``).

    The hot path of consuming: one loop, no call per entry beyond Message
    itself, which halves the cost of going through redis-py's reply parsing.
    """
    taken: list[Message] = []
    append = taken.append
    for entry_id, flat in entries:
        # Entries written by encode() start id, published_at, payload and may
        # go on with key and headers: read those by position, anything else
        # (retry entries, other writers) by name.
        size = len(flat)
        if (
            size < 6
            or size > 10
            or flat[0] != b"id"
            or flat[2] != b"published_at"
            or flat[4] != b"payload"
        ):
            pairs = iter(flat)
            append(message(topic, source, entry_id, dict(zip(pairs, pairs, strict=False)), 1))
            continue
        key = headers = None
        for at in range(6, size, 2):
            name = flat[at]
            if name == b"key":
                key = flat[at + 1].decode()
            elif name == b"headers":
                headers = orjson.loads(flat[at + 1])
            else:
                break
        else:
            append(
                Message(
                    flat[1].decode(),
                    topic,
                    flat[5],
                    key,
                    headers if headers is not None else NO_HEADERS,
                    1,
                    float(flat[3]),
                    None,
                    None,
                    (source, entry_id),
                )
            )
            continue
        pairs = iter(flat)
        append(message(topic, source, entry_id, dict(zip(pairs, pairs, strict=False)), 1))
    return taken


def message(
    topic: str, source: int, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
) -> Message:
    """The delivery of one entry, on its ``deliveries``-th delivery by Redis's count."""
    msg_id = fields.get(b"id")
    key = fields.get(b"key")
    headers = fields.get(b"headers")
    published = fields.get(b"published_at")
    attempts = fields.get(b"attempts")
    return Message(
        id=msg_id.decode() if msg_id is not None else entry_id.decode(),
        topic=topic,
        payload=fields.get(b"payload", b""),
        key=key.decode() if key is not None else None,
        headers=orjson.loads(headers) if headers else NO_HEADERS,
        attempt=(int(attempts) if attempts else 0) + deliveries,
        published_at=float(published) if published else _entry_time(entry_id),
        receipt=(source, entry_id),
    )


def dead_letter(keys: Keys, entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    """A dead-letter stream entry as the queue shows it."""
    msg_id = fields.get(b"id")
    key = fields.get(b"key")
    headers = fields.get(b"headers")
    failed = fields.get(b"failed_at")
    return DeadLetter(
        id=entry_id.decode(),
        message_id=msg_id.decode() if msg_id is not None else "",
        topic=keys.topic,
        group=keys.group,
        payload=fields.get(b"payload", b""),
        key=key.decode() if key is not None else None,
        headers=orjson.loads(headers) if headers else {},
        attempts=int(fields.get(b"attempts", b"0")),
        error=fields.get(b"error", b"").decode(errors="replace"),
        failed_at=float(failed) if failed else _entry_time(entry_id),
    )


def valid_ids(ids: Sequence[str]) -> list[str]:
    """The ids that can name a stream entry, once each; others cannot be there, so are skipped."""
    return [i for i in dict.fromkeys(ids) if _ENTRY_ID.fullmatch(i)]


def _entry_time(entry_id: bytes) -> float:
    """When Redis added the entry: the milliseconds part of its id."""
    return int(entry_id.split(b"-", 1)[0]) / 1000
