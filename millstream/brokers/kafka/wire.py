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

import logging
import math
import time
from collections.abc import Iterable, Sequence
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
    "Record",
    "dead_letter",
    "dead_letter_record",
    "delay_topic",
    "dlq_topic",
    "message",
    "messages",
    "replay_record",
    "retry_record",
    "retry_topic",
    "tombstone",
    "topic_records",
]

Headers = list[tuple[str, bytes]]
Record = tuple[bytes | None, bytes, Headers, int]
"""A record to send: (key, value, headers, timestamp in milliseconds)."""

log = logging.getLogger("millstream.brokers")

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


def delay_topic(topic: str) -> str:
    """Where delayed publishes to ``topic`` wait, each with its due time; every group reads it."""
    return f"{topic}.delayed"


def dlq_topic(topic: str) -> str:
    """The dead letters of every group of ``topic`` (each letter names its group)."""
    return f"{topic}.dlq"


def topic_records(outgoing: Sequence[OutgoingMessage]) -> list[Record]:
    """The topic records of a publish call, in order: the publish time is the timestamp."""
    return [
        (
            out.key.encode() if out.key is not None else None,
            out.payload,
            _topic_headers(out),
            int(out.published_at * 1000),
        )
        for out in outgoing
    ]


def _topic_headers(out: OutgoingMessage) -> Headers:
    """The headers of a topic record: the id, then the user's."""
    headers: Headers = [(HEADER_ID, out.id.encode())]
    if out.headers:
        headers += [(name, value.encode()) for name, value in out.headers.items()]
    if out.deliver_at is not None:
        headers.append((HEADER_DUE, repr(out.deliver_at).encode()))
    return headers


def _key(msg: Message) -> bytes | None:
    return msg.key.encode() if msg.key is not None else None


def _envelope(msg: Message) -> Headers:
    headers: Headers = [
        (HEADER_ID, msg.id.encode()),
        (HEADER_PUBLISHED_AT, repr(msg.published_at).encode()),
    ]
    headers += [(name, value.encode()) for name, value in msg.headers.items()]
    return headers


def retry_record(msg: Message, due: float, stamp: int) -> Record:
    """A record of the retry topic: delivered ``msg.attempt`` times, due at ``due`` (epoch s)."""
    headers = [
        *_envelope(msg),
        (HEADER_ATTEMPT, str(msg.attempt).encode()),
        (HEADER_DUE, repr(due).encode()),
    ]
    return (_key(msg), msg.payload, headers, stamp)


def dead_letter_record(
    msg: Message, group: str, source: tuple[str, int, int], error: str, stamp: int
) -> Record:
    """A record of the dead-letter topic, naming the group and where the message was."""
    topic, partition, offset = source
    headers = [
        *_envelope(msg),
        (HEADER_GROUP, group.encode()),
        (HEADER_SOURCE_TOPIC, topic.encode()),
        (HEADER_SOURCE_PARTITION, str(partition).encode()),
        (HEADER_SOURCE_OFFSET, str(offset).encode()),
        (HEADER_ATTEMPT, str(msg.attempt).encode()),
        (HEADER_ERROR, error.encode()),
        (HEADER_FAILED_AT, repr(time.time()).encode()),
    ]
    return (_key(msg), msg.payload, headers, stamp)


def replay_record(letter: Any, stamp: int) -> Record:
    """A dead letter's record put back in the retry topic: due now, as attempt 1."""
    ours, theirs = read_headers(letter.headers)
    headers: Headers = [
        (name, value.encode())
        for name, value in ours.items()
        if name in (HEADER_ID, HEADER_PUBLISHED_AT)
    ]
    headers += [(name, value.encode()) for name, value in theirs.items()]
    headers += [(HEADER_ATTEMPT, b"0"), (HEADER_DUE, repr(stamp / 1000).encode())]
    return (letter.key, letter.value or b"", headers, stamp)


def tombstone(letter_id: str, group: str, stamp: int) -> Record:
    """A record of the dead-letter topic saying ``group``'s letter ``letter_id`` is gone."""
    headers = [(HEADER_TOMBSTONE, letter_id.encode()), (HEADER_GROUP, group.encode())]
    return (None, b"", headers, stamp)


def read_headers(raw: Iterable[tuple[str, bytes | None]]) -> tuple[dict[str, str], dict[str, str]]:
    """(millstream's headers, the user's), both decoded; never raises (see :func:`_text`)."""
    ours: dict[str, str] = {}
    theirs: dict[str, str] = {}
    for name, value in raw:
        (ours if name in _OURS else theirs)[name] = _text(value)
    return ours, theirs


def messages(topic: str, records: list[Any], before: int, receipt: object) -> list[Message]:
    """The deliveries of one partition's ``records``; those below offset ``before`` were
    handed out before (see :func:`message`).

    Records another producer wrote with metadata that cannot be read take a
    careful path (:func:`_careful`) only when the fast one raises, so
    well-formed records pay nothing for it.
    """
    try:
        return [message(topic, r, r.offset < before, receipt) for r in records]
    except _UNREADABLE:
        return [_readable(topic, r, r.offset < before, receipt) for r in records]


def message(topic: str, record: Any, delivered_before: bool, receipt: object) -> Message:
    """The delivery of ``record`` (of the topic or its retry topic).

    ``delivered_before``: the group handed it out already and never settled
    it (a member crashed), so this delivery counts one more attempt. The hot
    path of consuming: one pass over the headers, and no dict for ours
    unless the record (of the retry topic) has more than the id, nor for the
    application's unless it has any. Raises on metadata it cannot read
    (:func:`messages` then reads the record carefully).
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
            ours[name] = raw.decode()
        else:
            if theirs is None:
                theirs = {}
            theirs[name] = raw.decode()
    key = record.key
    value = record.value
    attempts, published_at = 0, record.timestamp / 1000
    if ours is not None:
        attempts = int(ours.get(HEADER_ATTEMPT, 0))
        if published := ours.get(HEADER_PUBLISHED_AT):
            published_at = float(published)
        if attempts < 0 or not math.isfinite(published_at):
            raise ValueError("out of range")
    return Message(
        msg_id or _stand_in_id(record),
        topic,
        value if value is not None else b"",
        key.decode() if key is not None else None,
        theirs if theirs is not None else NO_HEADERS,
        attempts + (2 if delivered_before else 1),
        published_at,
        record.partition,
        record.offset,
        receipt,
    )


# What reading a header or key another producer wrote can raise: a value that
# is not UTF-8 (UnicodeDecodeError is a ValueError) or not a number, or none.
_UNREADABLE = (ValueError, AttributeError, TypeError)


def _readable(topic: str, record: Any, delivered_before: bool, receipt: object) -> Message:
    try:
        return message(topic, record, delivered_before, receipt)
    except _UNREADABLE:
        return _careful(topic, record, delivered_before, receipt)


def _careful(topic: str, record: Any, delivered_before: bool, receipt: object) -> Message:
    """:func:`message` for a record with metadata it could not read.

    Nothing a producer writes stops the consumer: a field that cannot be read
    gets a default and a warning naming it. An id or key that is not UTF-8 is
    decoded with backslash escapes, the same on every redelivery.
    """
    where = f"topic {record.topic!r} partition {record.partition} offset {record.offset}"
    ours: dict[str, str] = {}
    theirs: dict[str, str] = {}
    for name, raw in record.headers:
        text = _checked(where, f"header {name!r}", raw)
        (ours if name in _OURS else theirs)[name] = text if text is not None else ""
    attempts = _number(where, HEADER_ATTEMPT, ours.get(HEADER_ATTEMPT), int, 0)
    published_at = _number(
        where, HEADER_PUBLISHED_AT, ours.get(HEADER_PUBLISHED_AT) or None, float, None
    )
    key = record.key
    value = record.value
    return Message(
        ours.get(HEADER_ID) or _stand_in_id(record),
        topic,
        value if value is not None else b"",
        _checked(where, "the key", key) if key is not None else None,
        theirs or NO_HEADERS,
        attempts + (2 if delivered_before else 1),
        record.timestamp / 1000 if published_at is None else published_at,
        record.partition,
        record.offset,
        receipt,
    )


def _stand_in_id(record: Any) -> str:
    """The id of a record another producer wrote without one: where it is, which a
    redelivery keeps, and a retry or dead letter carries on in ``ms-id``."""
    return f"{record.topic}-{record.partition}-{record.offset}"


def _checked(where: str, what: str, raw: bytes | None) -> str | None:
    """``raw`` as text; one that is not UTF-8 escaped, none ``None``, each with a warning."""
    if raw is None:
        log.warning("kafka: %s: %s is None, expected UTF-8 text; ignored", where, what)
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        text = raw.decode(errors="backslashreplace")
        log.warning(
            "kafka: %s: %s is %s, which is not UTF-8; read as %s",
            where,
            what,
            _shown(raw),
            _shown(text),
        )
        return text


def _number(
    where: str, name: str, text: str | None, kind: type[float], default: float | None
) -> Any:
    """Header ``name`` read as ``kind``: finite and not negative, else ``default`` and a
    warning."""
    if text is None:
        return default
    try:
        number = kind(text)
        if number >= 0 and math.isfinite(number):
            return number
    except (ValueError, OverflowError):
        pass
    expected = "a whole number, 0 or more" if kind is int else "epoch seconds"
    log.warning(
        "kafka: %s: header %r is %s, expected %s; %s",
        where,
        name,
        _shown(text),
        expected,
        "ignored" if default is None else f"read as {default}",
    )
    return default


def _shown(value: object) -> str:
    """``repr(value)``, cut to about 100 characters for a log line."""
    shown = repr(value)
    return shown if len(shown) <= 100 else f"{shown[:97]}..."


def _text(raw: bytes | None) -> str:
    """Decoded, never raising: no value is empty, bytes that are not UTF-8 are escaped."""
    return "" if raw is None else raw.decode(errors="backslashreplace")


def _safe(text: str | None, kind: type[float], default: float) -> Any:
    """``text`` as a finite ``kind``, else ``default``; never raises."""
    try:
        number = kind(text) if text else default
    except (ValueError, OverflowError):
        return default
    return number if math.isfinite(number) else default


def due(record: Any) -> float:
    """When a retry record is due (epoch seconds); 0 (now) when it says nothing readable."""
    for name, raw in record.headers:
        if name == HEADER_DUE:
            try:
                at = float(raw)
                if math.isfinite(at):
                    return at
            except (TypeError, ValueError):
                pass
            log.warning(
                "kafka: topic %r partition %d offset %d: header %r is %s, expected epoch "
                "seconds; due now",
                record.topic,
                record.partition,
                record.offset,
                HEADER_DUE,
                _shown(raw),
            )
            return 0.0
    return 0.0


def dead_letter(topic: str, record: Any) -> DeadLetter | None:
    """The letter a dead-letter record holds; ``None`` for a tombstone. Never raises:
    what cannot be read is empty or zero."""
    ours, theirs = read_headers(record.headers)
    if HEADER_TOMBSTONE in ours:
        return None
    key = record.key
    return DeadLetter(
        id=f"{record.partition}-{record.offset}",
        message_id=ours.get(HEADER_ID, ""),
        topic=topic,
        group=ours.get(HEADER_GROUP, ""),
        payload=record.value if record.value is not None else b"",
        key=_text(key) if key is not None else None,
        headers=dict(theirs),
        attempts=_safe(ours.get(HEADER_ATTEMPT), int, 0),
        error=ours.get(HEADER_ERROR, ""),
        failed_at=_safe(ours.get(HEADER_FAILED_AT), float, record.timestamp / 1000),
    )
