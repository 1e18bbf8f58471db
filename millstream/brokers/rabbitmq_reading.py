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
from collections.abc import Iterable, Sequence
from typing import Any

from aiormq.abc import DeliveredMessage

from millstream.brokers.base import DeadLetter
from millstream.brokers.rabbitmq_envelope import (
    BROKER_HEADERS,
    HEADER_FAILED_AT,
    HEADER_LETTER_ID,
    OWN_HEADERS,
    Names,
    content_id,
    tag_of,
)
from millstream.brokers.rabbitmq_frames import UNREADABLE
from millstream.message import (
    HEADER_ATTEMPT,
    HEADER_ERROR,
    HEADER_KEY,
    HEADER_PUBLISHED_AT,
    NO_HEADERS,
    Message,
)

__all__ = ["Unfetched", "attempt_of", "letter", "letter_id_of", "message", "messages"]

log = logging.getLogger("millstream.brokers.rabbitmq")

_NOT_THEIRS = OWN_HEADERS | BROKER_HEADERS
# Millstream's headers that say nothing about the delivery itself.
_PASSIVE = frozenset({HEADER_ERROR, HEADER_LETTER_ID, HEADER_FAILED_AT}) | (
    BROKER_HEADERS - {"x-delivery-count", UNREADABLE}
)


class _Unusual(Exception):
    """Not as millstream writes a message: read it carefully."""


def messages(
    topic: str, batch: Sequence[DeliveredMessage], holder: object
) -> tuple[list[Message], list[Message]]:
    """The messages of ``batch`` (receipts ``(holder, delivery tag)``), and those of
    them RabbitMQ returned from a member that went without acking them."""
    try:
        return [_message(topic, d, (holder, tag_of(d))) for d in batch], []
    except _Unusual:
        out = [_careful(topic, d, (holder, tag_of(d)), True) for d in batch]
        return out, [m for m, d in zip(out, batch, strict=True) if _returned(d)]


class Unfetched:
    """Deliveries a member had received and not yet handed out when its connection died.

    RabbitMQ counts their return as a delivery (``x-delivery-count``, the
    ``redelivered`` flag) though no handler saw them, so a flapping network
    ran their attempts up until the runtime buried healthy messages as
    delivered too often. The next delivery of each gives that count back.
    One per broker, so it outlives reconnections; at most ``LIMIT`` entries,
    the oldest forgotten first (another member may have taken them).
    """

    LIMIT = 20_000

    def __init__(self) -> None:
        self._returns: dict[tuple[str, str], int] = {}

    def remember(self, queue: str, deliveries: Iterable[DeliveredMessage]) -> None:
        returns = self._returns
        for delivered in deliveries:
            key = (queue, delivered.header.properties.message_id or content_id(delivered))
            returns[key] = returns.pop(key, 0) + 1
        while len(returns) > self.LIMIT:
            del returns[next(iter(returns))]

    def take(self, queue: str, message: Message) -> bool:
        """Whether ``message`` came back from such a return; its attempt is set right."""
        key = (queue, message.id)
        count = self._returns.pop(key, 0)
        if not count:
            return False
        if count > 1:
            self._returns[key] = count - 1
        message.attempt = max(1, message.attempt - 1)
        return True


def message(topic: str, delivered: DeliveredMessage, receipt: object) -> Message:
    """The message of one delivery; never raises on what another producer wrote."""
    try:
        return _message(topic, delivered, receipt)
    except _Unusual:
        return _careful(topic, delivered, receipt, True)


def _message(topic: str, delivered: DeliveredMessage, receipt: object) -> Message:
    if delivered.delivery.redelivered:  # type: ignore[union-attr]
        raise _Unusual
    props = delivered.header.properties
    raw = props.headers
    theirs: dict[str, str] | None = None
    key, before, published_at = None, 0, None
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
    )


def _careful(topic: str, delivered: DeliveredMessage, receipt: object, warn: bool) -> Message:
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
    theirs = {
        name: _header(where, name, value) for name, value in raw.items() if name not in _NOT_THEIRS
    }
    return Message(
        ident,
        topic,
        delivered.body,
        _key(where, raw.get(HEADER_KEY)),
        theirs or NO_HEADERS,
        _attempt(where, raw, delivered),
        _stamp(props.timestamp) if published is None else published / 1000,
        None,
        None,
        receipt,
    )


def attempt_of(delivered: DeliveredMessage) -> int:
    """The attempt a delivery is: earlier copies' deliveries, this copy's returns, plus one."""
    props = delivered.header.properties
    raw = props.headers if isinstance(props.headers, dict) else {}
    return _attempt(None, raw, delivered)


def _attempt(where: str | None, raw: dict[str, Any], delivered: DeliveredMessage) -> int:
    before = _number(where, HEADER_ATTEMPT, raw.get(HEADER_ATTEMPT), "a whole number")
    returns = _number(where, "x-delivery-count", raw.get("x-delivery-count"), "a whole number")
    floor = 1 if _returned(delivered) else 0
    return int(before or 0) + max(int(returns or 0), floor) + 1


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
    found = _careful(names.topic, delivered, None, False)
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
