"""How a millstream message travels in NATS: headers in, ``Message`` out, dead letters both ways.

A message on the topic is its payload with NATS headers: ``Nats-Msg-Id``
(the message id: JetStream drops a second publish of the same id within
its duplicate window, so a publish retried after a lost acknowledgement
does not store the message twice), ``ms-published-at`` and, when set,
``ms-key``; the user's headers go as they are. Messages another tool
publishes need none of these: the id is then ``<stream>:<sequence>``.

A delayed publish carries ``ms-deliver-at`` (Unix seconds). JetStream 2.9
cannot hold a published message back, so its first delivery is expected
early, and a member ``nak``-s it for the time left: the delivery count of a
message with ``ms-deliver-at`` has that first delivery taken off. A copy keeps
``ms-deliver-at`` only while it is still ahead (and then counts one
delivery more in ``ms-attempt``, for its own early first delivery).

A group-private copy (a released or replayed message) carries ``ms-id``
instead of ``Nats-Msg-Id`` (the duplicate window would drop it) and
``ms-attempt``: the deliveries it had before, which the delivery count of
the copy adds to. A dead letter carries the same, plus ``ms-error`` (JSON,
so line breaks survive) and ``ms-failed-at``.

Nothing another producer puts in these headers stops a member: :func:`decode`
reads well-formed messages at full speed, and when it raises,
:func:`decode_carefully` reads the message field by field, logs what it
could not read and uses a default instead (the id stays the id: header values
that are not UTF-8 are read with backslash escapes, see :func:`parse_headers`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from millstream.brokers.base import DeadLetter
from millstream.message import HEADER_DELIVER_AT, Message, OutgoingMessage

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = [
    "dead_letter",
    "decode",
    "decode_carefully",
    "delivery",
    "held_back",
    "letter_headers",
    "parse_headers",
    "private_headers",
    "replay_headers",
    "topic_headers",
]

MSG_ID = "Nats-Msg-Id"
ID = "ms-id"
KEY = "ms-key"
PUBLISHED_AT = "ms-published-at"
ATTEMPT = "ms-attempt"
DELIVER_AT = HEADER_DELIVER_AT
ERROR = "ms-error"
FAILED_AT = "ms-failed-at"
_OURS = ("ms-", "Nats-", "nats-")
T = TypeVar("T", int, float)

_SHOWN = 100  # characters of a malformed value a log line shows at most

log = logging.getLogger("millstream.brokers")


def parse_headers(raw: bytes) -> dict[str, str]:
    """NATS header lines (``Name: value``, CRLF-separated, no status line) as a dict.

    A value that is not UTF-8 is read with backslash escapes (``\\xff``): the
    same bytes always give the same text and different bytes different text, so
    an id or key another producer wrote that way stays stable across
    redeliveries and never collides with another. A name that is not ASCII, or
    has white space in it, is not a header name: that line is skipped.
    """
    headers: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if key and not any(c.isspace() for c in key):
            headers[key] = value.strip().decode("utf-8", "backslashreplace")
    return headers


def topic_headers(out: OutgoingMessage) -> dict[str, str]:
    """The headers of ``out`` published on its topic."""
    headers = {**out.headers, MSG_ID: out.id, PUBLISHED_AT: repr(out.published_at)}
    if out.key is not None:
        headers[KEY] = out.key
    if out.deliver_at is not None:
        headers[DELIVER_AT] = repr(out.deliver_at)
    return headers


def private_headers(message: Message, before: int) -> dict[str, str]:
    """The headers of a copy of ``message`` for one group, ``before`` deliveries counted
    (one more if it is a delayed publish still ahead: its early first delivery is none)."""
    headers = {**message.headers, ID: message.id, PUBLISHED_AT: repr(message.published_at)}
    if message.key is not None:
        headers[KEY] = message.key
    if message.deliver_at > time.time():
        headers[DELIVER_AT] = repr(message.deliver_at)
        before += 1
    headers[ATTEMPT] = str(before)
    return headers


def held_back(
    batch: list[Message], now: float
) -> tuple[list[Message], list[tuple[Message, float]], list[tuple[Message, int]]]:
    """Sort a batch by what to do with its delayed publishes: (hand out, ``nak`` with the
    seconds left, copy back with the deliveries to count).

    The expected early delivery of one (attempt 0) is ``nak``-ed for the time
    it has left. Any other that does not fit the count, an early one delivered
    again (its member stopped) or a first delivery that came only after its
    time, goes back as a private copy whose count starts right.
    """
    due: list[Message] = []
    naks: list[tuple[Message, float]] = []
    copies: list[tuple[Message, int]] = []
    for message in batch:
        ahead = message.deliver_at > now
        if not ahead and message.attempt >= 1:
            due.append(message)
        elif ahead and message.attempt == 0:
            naks.append((message, message.deliver_at - now))
        else:  # private_headers counts the early first delivery of one still ahead
            copies.append((message, -1 if ahead else 0))
    return due, naks, copies


def letter_headers(message: Message, reason: str) -> dict[str, str]:
    """The headers of ``message`` buried in the dead-letter stream with ``reason``."""
    headers = private_headers(message, message.attempt)
    headers[ERROR] = json.dumps(reason)
    headers[FAILED_AT] = repr(time.time())
    return headers


def delivery(reply: str) -> tuple[int, int, int]:
    """(deliveries, stream sequence, stored-at ns) from a JetStream acknowledgement subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>``,
    or the newer form with a domain and an account hash after ``ACK``.
    """
    tokens = reply.split(".")
    at = 4 if len(tokens) == 9 else 6
    return int(tokens[at]), int(tokens[at + 1]), int(tokens[at + 3])


def decode(topic: str, stream: str, msg: Msg) -> Message:
    """The ``Message`` for one JetStream delivery; its receipt is the acknowledgement subject."""
    reply = msg.reply
    delivered, sequence, stored_ns = delivery(reply)
    headers = msg.headers
    if not headers:
        return Message(
            id=f"{stream}:{sequence}",
            topic=topic,
            payload=msg.data,
            attempt=delivered,
            published_at=stored_ns / 1e9,
            receipt=reply,
        )
    user = {k: v for k, v in headers.items() if not k.startswith(_OURS)}
    message_id = headers.get(MSG_ID) or headers.get(ID) or f"{stream}:{sequence}"
    published = headers.get(PUBLISHED_AT)
    before = headers.get(ATTEMPT)
    if before:  # only group-private copies carry it: the check costs the others nothing
        delivered += _deliveries_before(before)
    deliver_at = headers.get(DELIVER_AT)
    if deliver_at:
        delivered -= 1  # its first delivery came early and was held back
    return Message(
        id=message_id,
        topic=topic,
        payload=msg.data,
        key=headers.get(KEY),
        headers=user,
        attempt=delivered,
        published_at=float(published) if published else stored_ns / 1e9,
        receipt=reply,
        deliver_at=_seconds(deliver_at) if deliver_at else 0.0,
    )


def _seconds(text: str) -> float:
    at = float(text)
    if not math.isfinite(at):
        raise ValueError(f"{text!r} is not a finite number")
    return at


def _deliveries_before(text: str) -> int:
    before = int(text)
    if before < 0:
        raise ValueError(f"{ATTEMPT} {text!r} is negative")
    return before


def decode_carefully(topic: str, stream: str, msg: Msg) -> Message | None:
    """:func:`decode` for a delivery it could not read: field by field, never raising.

    A header that cannot be read is logged (topic, header, value, what was
    expected) and replaced by its default: ``ms-attempt`` by none (the
    delivery count alone), ``ms-published-at`` by the time the stream stored
    the message. ``None`` (logged) for what is not a JetStream delivery at all:
    a message someone published to the member's inbox.
    """
    try:
        delivered, sequence, stored_ns = delivery(msg.reply)
    except (ValueError, IndexError):
        log.warning(
            "nats: a message came to the inbox of a member of topic %r with reply subject %s, "
            "which is not a JetStream acknowledgement subject; not a delivery of the group's "
            "consumer, dropped",
            topic,
            _shown(msg.reply),
        )
        return None
    headers: Mapping[str, str] = msg.headers or {}
    message_id = headers.get(MSG_ID) or headers.get(ID) or f"{stream}:{sequence}"
    before = headers.get(ATTEMPT)
    if before:
        try:
            delivered += _deliveries_before(before)
        except ValueError:
            _ignored(topic, message_id, ATTEMPT, before, "a whole number of deliveries, 0 or more")
    published_at = stored_ns / 1e9
    published = headers.get(PUBLISHED_AT)
    if published:
        try:
            published_at = float(published)
        except ValueError:
            _ignored(topic, message_id, PUBLISHED_AT, published, "a Unix time in seconds")
    deliver_at = 0.0
    if due := headers.get(DELIVER_AT):
        delivered -= 1
        try:
            deliver_at = _seconds(due)
        except ValueError:
            _ignored(topic, message_id, DELIVER_AT, due, "a Unix time in seconds")
    return Message(
        id=message_id,
        topic=topic,
        payload=msg.data,
        key=headers.get(KEY),
        headers={k: v for k, v in headers.items() if not k.startswith(_OURS)},
        attempt=delivered,
        published_at=published_at,
        receipt=msg.reply,
        deliver_at=deliver_at,
    )


def _ignored(topic: str, message_id: str, name: str, value: str, expected: str) -> None:
    log.warning(
        "nats: message %s on topic %r: header %s is %s, expected %s; ignored (default used)",
        _shown(message_id),
        topic,
        name,
        _shown(value),
        expected,
    )


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}...({len(text)} characters)"


def dead_letter(
    topic: str, group: str, sequence: int, data: bytes, headers: Mapping[str, str]
) -> DeadLetter:
    """The ``DeadLetter`` stored at ``sequence`` of the group's dead-letter stream.

    Never raises: a letter another tool wrote into the stream, with headers
    that do not read, is listed with defaults (no error text, 0 attempts,
    failed at 0) and its headers as they are.
    """
    user: dict[str, Any] = {k: v for k, v in headers.items() if not k.startswith(_OURS)}
    return DeadLetter(
        id=str(sequence),
        message_id=headers.get(ID) or str(sequence),
        topic=topic,
        group=group,
        payload=data,
        key=headers.get(KEY),
        headers=user,
        attempts=_number(headers.get(ATTEMPT), int, 0),
        error=_reason(headers.get(ERROR)),
        failed_at=_number(headers.get(FAILED_AT), float, 0.0),
    )


def _number(text: str | None, kind: type[T], default: T) -> T:
    try:
        value = kind(text) if text else default
    except ValueError:
        return default
    return value if math.isfinite(value) else default


def _reason(text: str | None) -> str:
    if not text:
        return ""
    try:
        reason = json.loads(text)
    except ValueError:
        return text
    return reason if isinstance(reason, str) else text


def replay_headers(stored: Mapping[str, str]) -> dict[str, str]:
    """The headers of a dead letter put back into its group: no reason, no deliveries before."""
    headers = {k: v for k, v in stored.items() if k not in (ERROR, FAILED_AT)}
    headers[ATTEMPT] = "0"
    return headers
