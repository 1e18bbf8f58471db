"""What a RabbitMQ delivery says: its message, its attempt, its dead letter.

The hot path (:func:`messages`) reads a delivery as millstream writes one:
headers that are text, ``ms-key`` text, ``ms-published-at`` and
``ms-attempt`` whole numbers, first delivered. Anything else raises there,
and only then is the batch read carefully (:func:`_careful`), so a
well-formed message pays nothing for it:

- nothing another producer writes stops the consumer: a field that cannot
  be read gets a default (attempt 0, the publish time from the AMQP
  timestamp or now, no key) and a WARNING names topic, message, field,
  value and what was expected; a key or header that is not UTF-8 is read
  with backslash escapes, numbers as their text;
- a delivery RabbitMQ returned (``redelivered``) was held by a member that
  went without acking it: a crash or a lost connection, this member's
  predecessor included, since millstream releases by copying, never by
  returning. :func:`messages` counts those for ``taken_over``.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from aiormq.abc import DeliveredMessage

from millstream.brokers.base import DeadLetter
from millstream.brokers.rabbitmq.frames import UNREADABLE
from millstream.brokers.rabbitmq.wire import (
    BROKER_HEADERS,
    HEADER_FAILED_AT,
    HEADER_LETTER_ID,
    OWN_HEADERS,
    Names,
    content_id,
    tag_of,
)
from millstream.message import (
    HEADER_ATTEMPT,
    HEADER_DELIVER_AT,
    HEADER_ERROR,
    HEADER_KEY,
    HEADER_PUBLISHED_AT,
    NO_HEADERS,
    Message,
)

__all__ = [
    "attempt_of",
    "counted",
    "letter",
    "letter_id_of",
    "message",
    "messages",
    "returns_of",
]

log = logging.getLogger("millstream.brokers")

_NOT_THEIRS = OWN_HEADERS | BROKER_HEADERS
# Millstream's headers that say nothing about the delivery itself.
_PASSIVE = frozenset({HEADER_ERROR, HEADER_LETTER_ID, HEADER_FAILED_AT}) | (
    BROKER_HEADERS - {"x-delivery-count", UNREADABLE}
)


class _Unusual(Exception):
    """Not as millstream writes a message: read it carefully."""


def messages(
    topic: str, batch: Sequence[DeliveredMessage], holder: object, quorum: bool
) -> tuple[list[Message], list[Message]]:
    """The messages of ``batch`` (receipts ``(holder, delivery tag)``) from a quorum queue
    or not, and those of them RabbitMQ returned from a member that went without acking
    them."""
    try:
        return [_message(topic, d, (holder, tag_of(d))) for d in batch], []
    except _Unusual:
        out = [_careful(topic, d, (holder, tag_of(d)), True, quorum) for d in batch]
        return out, [m for m, d in zip(out, batch, strict=True) if _returned(d)]


def message(
    topic: str, delivered: DeliveredMessage, receipt: object, quorum: bool = True
) -> Message:
    """The message of one delivery; never raises on what another producer wrote."""
    try:
        return _message(topic, delivered, receipt)
    except _Unusual:
        return _careful(topic, delivered, receipt, True, quorum)


def _message(topic: str, delivered: DeliveredMessage, receipt: object) -> Message:
    if delivered.delivery.redelivered:  # type: ignore[union-attr]
        raise _Unusual
    props = delivered.header.properties
    raw = props.headers
    theirs: dict[str, str] | None = None
    key, before, published_at, deliver_at = None, 0, None, 0.0
    if raw:
        for name, value in raw.items():
            if type(value) is str and name not in _NOT_THEIRS:
                if theirs is None:
                    theirs = {}
                theirs[name] = value
            elif name == HEADER_PUBLISHED_AT and type(value) is int and value >= 0:
                published_at = value / 1000
            elif name == HEADER_KEY and type(value) is str:
                key = value
            elif name == HEADER_ATTEMPT and type(value) is int and value >= 0:
                before = value
            elif name == HEADER_DELIVER_AT and type(value) is int and value >= 0:
                deliver_at = value / 1000
            elif name not in _PASSIVE:
                raise _Unusual
    return Message(
        props.message_id or content_id(delivered),
        topic,
        delivered.body,
        key,
        theirs if theirs is not None else NO_HEADERS,
        before + 1,
        _stamp(props.timestamp) if published_at is None else published_at,
        None,
        None,
        receipt,
        deliver_at,
    )


def _careful(
    topic: str, delivered: DeliveredMessage, receipt: object, warn: bool, quorum: bool
) -> Message:
    props = delivered.header.properties
    raw = props.headers if isinstance(props.headers, dict) else {}
    ident = props.message_id or content_id(delivered)
    where = f"topic {topic!r} message {ident!r}" if warn else None
    if where is not None and (said := raw.get(UNREADABLE)):
        log.warning(
            "rabbitmq: %s: properties AMQP cannot read (%s), expected UTF-8 text, "
            "timestamps and known types; read with backslash escapes, or left out",
            where,
            _shown(said),
        )
    published = _number(where, HEADER_PUBLISHED_AT, raw.get(HEADER_PUBLISHED_AT), "epoch ms")
    deliver_at = _number(where, HEADER_DELIVER_AT, raw.get(HEADER_DELIVER_AT), "epoch ms")
    theirs = {
        name: _header(where, name, value) for name, value in raw.items() if name not in _NOT_THEIRS
    }
    return Message(
        ident,
        topic,
        delivered.body,
        _key(where, raw.get(HEADER_KEY)),
        theirs or NO_HEADERS,
        _attempt(where, raw, delivered, quorum),
        _stamp(props.timestamp) if published is None else published / 1000,
        None,
        None,
        receipt,
        0.0 if deliver_at is None else deliver_at / 1000,
    )


def attempt_of(delivered: DeliveredMessage, quorum: bool) -> int:
    """The attempt a delivery is: earlier copies' deliveries, this copy's returns, plus one."""
    props = delivered.header.properties
    raw = props.headers if isinstance(props.headers, dict) else {}
    return _attempt(None, raw, delivered, quorum)


def _attempt(
    where: str | None, raw: dict[str, Any], delivered: DeliveredMessage, quorum: bool
) -> int:
    """``ms-attempt``, plus this copy's returns, plus one. RabbitMQ counts returns in
    ``x-delivery-count`` on quorum queues, and sets it on redeliveries only: on a first
    delivery, or from a classic queue, the header is another producer's, no count."""
    before = int(_number(where, HEADER_ATTEMPT, raw.get(HEADER_ATTEMPT), "a whole number") or 0)
    returned = _returned(delivered)
    count = raw.get("x-delivery-count")
    if returned and quorum:
        returns = _number(where, "x-delivery-count", count, "a whole number")
        return before + max(int(returns or 0), 1) + 1
    if count is not None and where is not None:
        log.warning(
            "rabbitmq: %s: header 'x-delivery-count' is %s on %s, where RabbitMQ counts "
            "nothing in it (another producer wrote it); ignored",
            where,
            _shown(count),
            "a redelivery from a classic queue" if returned else "a first delivery",
        )
    return before + returned + 1


def returns_of(delivered: DeliveredMessage, quorum: bool) -> int:
    """How often RabbitMQ returned this copy before this delivery (0: a first delivery)."""
    if not _returned(delivered):
        return 0
    raw = delivered.header.properties.headers
    count = raw.get("x-delivery-count") if quorum and isinstance(raw, dict) else None
    return max(int(_number(None, "x-delivery-count", count, "a whole number") or 0), 1)


def counted(delivered: DeliveredMessage, quorum: bool) -> tuple[str, int, int]:
    """(message id, attempt, returns) of a delivery as RabbitMQ counted them, read quietly."""
    props = delivered.header.properties
    message_id = props.message_id or content_id(delivered)
    return message_id, attempt_of(delivered, quorum), returns_of(delivered, quorum)


def _returned(delivered: DeliveredMessage) -> bool:
    return bool(getattr(delivered.delivery, "redelivered", False))


def _number(where: str | None, name: str, value: object, expected: str) -> float | None:
    """A header read as a number, 0 or more (whole where ``expected`` says so); ``None``
    when absent or unreadable, with a warning at ``where`` for the latter."""
    if value is None:
        return None
    number: float | None = None
    if isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str | bytes | bytearray):
        with contextlib.suppress(ValueError):
            number = float(value)
    whole = expected == "a whole number"
    if (
        number is not None
        and number >= 0
        and math.isfinite(number)
        and (not whole or number == int(number))
    ):
        return number
    if where is not None:
        log.warning(
            "rabbitmq: %s: header %r is %s, expected %s, 0 or more; ignored",
            where,
            name,
            _shown(value),
            expected,
        )
    return None


def _key(where: str | None, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return _decoded(where, HEADER_KEY, bytes(value))
    if where is not None:
        log.warning(
            "rabbitmq: %s: header %r is %s, expected text; the message has no key",
            where,
            HEADER_KEY,
            _shown(value),
        )
    return None


def _header(where: str | None, name: str, value: object) -> str:
    """The user's header as text: numbers and times as theirs, bytes decoded."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return _decoded(where, name, bytes(value))
    if value is None:
        return ""
    if isinstance(value, dict | list) and where is not None:
        log.warning(
            "rabbitmq: %s: header %r is %s, expected text; read as its Python text",
            where,
            name,
            _shown(value),
        )
    return str(value)


def _decoded(where: str | None, name: str, raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "backslashreplace")
        if where is not None:
            log.warning(
                "rabbitmq: %s: header %r is %s, which is not UTF-8; read as %s",
                where,
                name,
                _shown(raw),
                _shown(text),
            )
        return text


def _stamp(stamp: object) -> float:
    if isinstance(stamp, datetime.datetime):
        return stamp.timestamp()
    return time.time()


def _shown(value: object) -> str:
    """``repr(value)``, cut to about 100 characters for a log line."""
    shown = repr(value)
    return shown if len(shown) <= 100 else f"{shown[:97]}..."


def letter(names: Names, delivered: DeliveredMessage) -> DeadLetter:
    """The :class:`DeadLetter` a message in the dead-letter queue stands for; never raises."""
    props = delivered.header.properties
    raw = props.headers if isinstance(props.headers, dict) else {}
    found = _careful(names.topic, delivered, None, False, False)
    failed = _number(None, HEADER_FAILED_AT, raw.get(HEADER_FAILED_AT), "epoch ms")
    return DeadLetter(
        id=letter_id_of(delivered),
        message_id=found.id,
        topic=names.topic,
        group=names.group,
        payload=found.payload,
        key=found.key,
        headers=dict(found.headers),
        attempts=int(_number(None, HEADER_ATTEMPT, raw.get(HEADER_ATTEMPT), "a whole number") or 0),
        error=_header(None, HEADER_ERROR, raw.get(HEADER_ERROR, "")),
        failed_at=(failed or 0) / 1000,
    )


def letter_id_of(delivered: DeliveredMessage) -> str:
    """The id a dead letter is listed, replayed and purged by."""
    props = delivered.header.properties
    raw = props.headers if isinstance(props.headers, dict) else {}
    value = raw.get(HEADER_LETTER_ID)
    if value is not None:
        return _header(None, HEADER_LETTER_ID, value)
    return props.message_id or content_id(delivered)
