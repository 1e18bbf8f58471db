"""The headers millstream reads in a RabbitMQ message, read carefully when others wrote them.

:func:`millstream.brokers.rabbitmq_envelope.messages` reads deliveries as
millstream publishes them at full speed; a delivery it cannot read that way
comes here, to :func:`careful`, which never raises: every field it cannot
read gets its default, and one WARNING line per delivery names the topic,
the field, the value (its repr, cut short) and what was expected. Nothing a
producer puts in a message stops a member, and nothing it puts there changes
what millstream counts (attempts, ids) beyond what RabbitMQ counted.

What is read, and what stands in when it cannot be:

- ``message_id``: the id; not UTF-8, it is read with backslash escapes (by
  :mod:`rabbitmq_frames`), stable across redeliveries. None: ``ms-id`` (a
  copy whose escaped id outgrew a short string), else a hash of the body.
- ``ms-key``: text; bytes that are not UTF-8 are read with escapes, any
  other value as its JSON text.
- ``ms-published-at``: milliseconds since the epoch, else the ``timestamp``
  property, else now.
- ``ms-attempt``: deliveries before this copy, a whole number from 0; else 0.
- ``x-delivery-count``: RabbitMQ's count of returns, read on a redelivery
  from a quorum queue only (a classic queue never sets it, so there it is
  another producer's), a whole number from 1; else 1.
- the user's headers: text; any other AMQP value is handed over as its JSON
  text (bytes as text with escapes).
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import orjson
from aiormq.abc import DeliveredMessage

from millstream.brokers.rabbitmq_frames import Escaped
from millstream.message import (
    HEADER_ATTEMPT,
    HEADER_ERROR,
    HEADER_ID,
    HEADER_KEY,
    HEADER_PUBLISHED_AT,
    NO_HEADERS,
    Message,
)

__all__ = [
    "BROKER_HEADERS",
    "DELIVERY_COUNT",
    "HEADER_FAILED_AT",
    "HEADER_LETTER_ID",
    "NOT_USERS",
    "careful",
    "content_id",
    "json_value",
    "number",
    "returns_of",
    "storable",
    "text",
]

log = logging.getLogger("millstream.brokers")

N = TypeVar("N", int, float)

HEADER_LETTER_ID = "ms-dead-id"
HEADER_FAILED_AT = "ms-failed-at"
DELIVERY_COUNT = "x-delivery-count"

# Headers RabbitMQ adds (dead-lettering, quorum queues) and millstream's own:
# neither is the user's business, and a republished copy drops the former.
BROKER_HEADERS = frozenset(
    {
        DELIVERY_COUNT,
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)
OWN_HEADERS = frozenset(
    {
        HEADER_ID,
        HEADER_KEY,
        HEADER_PUBLISHED_AT,
        HEADER_ATTEMPT,
        HEADER_ERROR,
        HEADER_LETTER_ID,
        HEADER_FAILED_AT,
    }
)
NOT_USERS = BROKER_HEADERS | OWN_HEADERS
_SHOWN = 100  # characters of a malformed value a warning shows


def content_id(body: bytes) -> str:
    """An id for a message another tool published without one: stable across redeliveries."""
    return hashlib.blake2b(body, digest_size=12).hexdigest()


def careful(
    topic: str, delivered: DeliveredMessage, receipt: object, quorum: bool, *, warn: bool = True
) -> Message:
    """The :class:`Message` for a delivery read field by field; never raises.

    Each field that cannot be read gets its default; with ``warn`` one
    WARNING line lists them all.
    """
    props = delivered.header.properties
    raw: Mapping[str, Any] = props.headers if isinstance(props.headers, dict) else {}
    problems: list[str] = []
    message_id = _message_id(props.message_id, raw, delivered.body, problems)
    key = raw.get(HEADER_KEY)
    found = Message(
        id=message_id,
        topic=topic,
        payload=delivered.body,
        key=None if key is None else text(key, f"header {HEADER_KEY}", problems),
        headers=_user_headers(raw, problems),
        attempt=_attempt(delivered, raw, quorum, problems),
        published_at=_published_at(raw.get(HEADER_PUBLISHED_AT), props.timestamp, problems),
        receipt=receipt,
    )
    if problems and warn:
        log.warning(
            "rabbitmq: message %s on topic %r: %s",
            _shown(message_id),
            topic,
            "; ".join(problems),
        )
    return found


def _message_id(value: object, raw: Mapping[str, Any], body: bytes, problems: list[str]) -> str:
    if isinstance(value, Escaped):
        problems.append(f"message_id {_shown(value)} is not UTF-8; read with the bytes escaped")
    if isinstance(value, str) and value:
        return value
    copied = raw.get(HEADER_ID)
    if copied is not None:
        return text(copied, f"header {HEADER_ID}", problems)
    return content_id(body)


def _user_headers(raw: Mapping[str, Any], problems: list[str]) -> Mapping[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw.items():
        if name in NOT_USERS:
            continue
        if isinstance(name, Escaped):
            problems.append(f"header name {_shown(name)} is not UTF-8; read with the bytes escaped")
        headers[name] = text(value, f"header {name}", problems)
    return headers or NO_HEADERS


def _attempt(
    delivered: DeliveredMessage, raw: Mapping[str, Any], quorum: bool, problems: list[str]
) -> int:
    attempt = 1
    before = raw.get(HEADER_ATTEMPT)
    if before is not None:
        attempt += number(
            before, int, 0, minimum=0, shown=f"header {HEADER_ATTEMPT}", problems=problems
        )
    if getattr(delivered.delivery, "redelivered", False):
        returns = raw.get(DELIVERY_COUNT) if quorum else None
        if returns is None:
            attempt += 1
        else:
            attempt += number(
                returns, int, 1, minimum=1, shown=f"header {DELIVERY_COUNT}", problems=problems
            )
    return attempt


def returns_of(delivered: DeliveredMessage, quorum: bool) -> int:
    """How many times RabbitMQ returned this copy before this delivery (0: the first)."""
    if not getattr(delivered.delivery, "redelivered", False):
        return 0
    raw = delivered.header.properties.headers
    count = raw.get(DELIVERY_COUNT) if quorum and isinstance(raw, dict) else None
    return 1 if count is None else number(count, int, 1, minimum=1, shown=DELIVERY_COUNT)


def _published_at(value: object, stamp: object, problems: list[str]) -> float:
    if value is not None:
        ms = number(value, float, -1.0, minimum=0, shown=HEADER_PUBLISHED_AT)
        if ms >= 0:
            return ms / 1000
        problems.append(
            f"header {HEADER_PUBLISHED_AT} is {_shown(value)}, expected milliseconds since "
            "the epoch; the timestamp property (or now) stands in"
        )
    if isinstance(stamp, datetime.datetime):
        return stamp.timestamp()
    if stamp is not None:
        problems.append(f"property timestamp {_shown(stamp)} is not a time; now stands in")
    return time.time()


def number(
    value: object,
    kind: Callable[[Any], N],
    default: N,
    *,
    minimum: int,
    shown: str,
    problems: list[str] | None = None,
) -> N:
    """``value`` as a finite ``kind`` of at least ``minimum`` (numbers and their text);
    else ``default``, noted in ``problems`` (when given) with ``shown`` naming the field."""
    try:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode()
        found = kind(value)
        if isinstance(value, float) and kind is int and found != value:
            raise ValueError(value)
        if found >= minimum and math.isfinite(found):
            return found
    except (TypeError, ValueError, OverflowError, ArithmeticError):
        pass
    if problems is not None:
        whole = "a whole number" if kind is int else "a number"
        problems.append(
            f"{shown} is {_shown(value)}, expected {whole} from {minimum}; {default} stands in"
        )
    return default


def text(value: object, shown: str, problems: list[str] | None = None) -> str:
    """A header value as text: a string as it is, bytes with non-UTF-8 bytes escaped,
    anything else as its JSON text; noted in ``problems`` (when given) unless a string."""
    if type(value) is str:
        return value
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        try:
            found = raw.decode()
        except UnicodeDecodeError:
            found = raw.decode(errors="backslashreplace")
            if problems is not None:
                problems.append(f"{shown} is {_shown(raw)}, not UTF-8; read with the bytes escaped")
        return found
    if isinstance(value, str):
        return str(value)
    found = orjson.dumps(json_value(value)).decode()
    if problems is not None:
        problems.append(f"{shown} is {_shown(value)}, not a string; read as its JSON text {found}")
    return found


def json_value(value: object) -> Any:
    """An AMQP field value as JSON can hold it: bytes as text (escaped where not UTF-8),
    times as seconds since the epoch, decimals as numbers (text when not finite)."""
    if value is None or type(value) in (str, int, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str | int):
        return str(value) if isinstance(value, str) else int(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="backslashreplace")
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)


def storable(value: Any) -> Any:
    """``value`` as pamqp can write it back, for the headers of a republished copy: bytes
    as a byte array, names longer than AMQP's 255 bytes (once escaped) dropped."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {str(k): storable(v) for k, v in value.items() if len(str(k).encode()) <= 255}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def _shown(value: object) -> str:
    """A malformed value as a warning shows it: its repr, cut short."""
    shown = repr(str(value) if isinstance(value, Escaped) else value)
    return shown if len(shown) <= _SHOWN else f"{shown[: _SHOWN - 3]}..."
