"""How a millstream message is a Kafka record, and back.

A topic record is the payload as its value, the key as its key (UTF-8) and
the publish time as its timestamp; the message id rides in the ``ms-id``
header and the user's headers next to it. Records of a group's retry topic
``<topic>.retry.<group>`` add the deliveries so far (``ms-attempt``), when
they are due (``ms-due``, epoch seconds) and the original publish time. A
dead letter in ``<topic>.dlq`` adds the group, where it came from (topic,
partition, offset), its attempts, the error and when it failed. A
tombstone in the dead-letter topic (``ms-tombstone``) marks letters that
were replayed or purged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from millstream.brokers.base import DeadLetter
from millstream.message import (
    HEADER_ATTEMPT,
    HEADER_ERROR,
    HEADER_ID,
    HEADER_PUBLISHED_AT,
    NO_HEADERS,
    Message,
    OutgoingMessage,
)

__all__ = [
    "HEADER_DUE",
    "HEADER_GROUP",
    "HEADER_TOMBSTONE",
    "Headers",
    "dead_letter",
    "dead_letter_headers",
    "dlq_topic",
    "message",
    "retry_headers",
    "retry_topic",
    "topic_headers",
]

Headers = list[tuple[str, bytes]]

HEADER_DUE = "ms-due"
HEADER_GROUP = "ms-group"
HEADER_SOURCE_TOPIC = "ms-source-topic"
HEADER_SOURCE_PARTITION = "ms-source-partition"
HEADER_SOURCE_OFFSET = "ms-source-offset"
HEADER_FAILED_AT = "ms-failed-at"
HEADER_TOMBSTONE = "ms-tombstone"
_OURS = frozenset(
    {
        HEADER_ID,
        HEADER_ATTEMPT,
        HEADER_PUBLISHED_AT,
        HEADER_ERROR,
        HEADER_DUE,
        HEADER_GROUP,
        HEADER_SOURCE_TOPIC,
        HEADER_SOURCE_PARTITION,
        HEADER_SOURCE_OFFSET,
        HEADER_FAILED_AT,
        HEADER_TOMBSTONE,
    }
)


def retry_topic(topic: str, group: str) -> str:
    """The topic only ``group`` reads: its retries, released messages and replays."""
    return f"{topic}.retry.{group}"


def dlq_topic(topic: str) -> str:
    """The dead letters of every group of ``topic`` (each letter names its group)."""
    return f"{topic}.dlq"


def topic_headers(out: OutgoingMessage) -> Headers:
    """The headers of a topic record: the id, then the user's."""
    headers: Headers = [(HEADER_ID, out.id.encode())]
    if out.headers:
        headers += [(name, value.encode()) for name, value in out.headers.items()]
    return headers


def _envelope(msg: Message) -> Headers:
    headers: Headers = [
        (HEADER_ID, msg.id.encode()),
        (HEADER_PUBLISHED_AT, repr(msg.published_at).encode()),
    ]
    headers += [(name, value.encode()) for name, value in msg.headers.items()]
    return headers


def retry_headers(msg: Message, attempts: int, due: float) -> Headers:
    """A record of the retry topic: delivered ``attempts`` times, due at ``due`` (epoch s)."""
    return [
        *_envelope(msg),
        (HEADER_ATTEMPT, str(attempts).encode()),
        (HEADER_DUE, repr(due).encode()),
    ]


def dead_letter_headers(
    msg: Message, group: str, source: tuple[str, int, int], error: str
) -> Headers:
    """A record of the dead-letter topic, naming the group and where the message was."""
    topic, partition, offset = source
    return [
        *_envelope(msg),
        (HEADER_GROUP, group.encode()),
        (HEADER_SOURCE_TOPIC, topic.encode()),
        (HEADER_SOURCE_PARTITION, str(partition).encode()),
        (HEADER_SOURCE_OFFSET, str(offset).encode()),
        (HEADER_ATTEMPT, str(msg.attempt).encode()),
        (HEADER_ERROR, error.encode()),
        (HEADER_FAILED_AT, repr(time.time()).encode()),
    ]


def read_headers(raw: Iterable[tuple[str, bytes]]) -> tuple[dict[str, str], dict[str, str]]:
    """(millstream's headers, the user's), both decoded."""
    ours: dict[str, str] = {}
    theirs: dict[str, str] = {}
    for name, value in raw:
        (ours if name in _OURS else theirs)[name] = value.decode(errors="replace")
    return ours, theirs


def message(topic: str, record: Any, delivered_before: bool, receipt: object) -> Message:
    """The delivery of ``record`` (of the topic or its retry topic).

    ``delivered_before``: the group handed it out already and never settled
    it (a member crashed), so this delivery counts one more attempt. The hot
    path of consuming: one pass over the headers, and no dict for ours
    unless the record (of the retry topic) has more than the id, nor for the
    application's unless it has any.
    """
    msg_id = None
    ours: dict[str, str] | None = None
    theirs: dict[str, str] | None = None
    for name, raw in record.headers:
        if name == HEADER_ID:
            msg_id = raw.decode()
        elif name in _OURS:
            if ours is None:
                ours = {}
            ours[name] = raw.decode(errors="replace")
        else:
            if theirs is None:
                theirs = {}
            theirs[name] = raw.decode(errors="replace")
    key = record.key
    value = record.value
    attempts, published_at = 0, record.timestamp / 1000
    if ours is not None:
        attempts = int(ours.get(HEADER_ATTEMPT, 0))
        if published := ours.get(HEADER_PUBLISHED_AT):
            published_at = float(published)
    return Message(
        msg_id or f"{record.topic}-{record.partition}-{record.offset}",
        topic,
        value if value is not None else b"",
        key.decode(errors="replace") if key is not None else None,
        theirs if theirs is not None else NO_HEADERS,
        attempts + (2 if delivered_before else 1),
        published_at,
        record.partition,
        record.offset,
        receipt,
    )


def due(record: Any) -> float:
    """When a retry record is due (epoch seconds); 0 when it says nothing."""
    for name, raw in record.headers:
        if name == HEADER_DUE:
            return float(raw)
    return 0.0


def dead_letter(topic: str, record: Any) -> DeadLetter | None:
    """The letter a dead-letter record holds; ``None`` for a tombstone."""
    ours, theirs = read_headers(record.headers)
    if HEADER_TOMBSTONE in ours:
        return None
    key = record.key
    published_failed = ours.get(HEADER_FAILED_AT)
    return DeadLetter(
        id=f"{record.partition}-{record.offset}",
        message_id=ours.get(HEADER_ID, ""),
        topic=topic,
        group=ours.get(HEADER_GROUP, ""),
        payload=record.value if record.value is not None else b"",
        key=key.decode(errors="replace") if key is not None else None,
        headers=theirs,
        attempts=int(ours.get(HEADER_ATTEMPT, 0)),
        error=ours.get(HEADER_ERROR, ""),
        failed_at=float(published_failed) if published_failed else record.timestamp / 1000,
    )
