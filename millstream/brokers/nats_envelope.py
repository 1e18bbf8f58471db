"""How a millstream message travels in NATS: headers in, ``Message`` out, dead letters both ways.

A message on the topic is its payload with NATS headers: ``Nats-Msg-Id``
(the message id: JetStream drops a second publish of the same id within
its duplicate window, so a publish retried after a lost acknowledgement
does not store the message twice), ``ms-published-at`` and, when set,
``ms-key``; the user's headers go as they are. Messages another tool
publishes need none of these: the id is then ``<stream>:<sequence>``.

A group-private copy (a released or replayed message) carries ``ms-id``
instead of ``Nats-Msg-Id`` (the duplicate window would drop it) and
``ms-attempt``: the deliveries it had before, which the delivery count of
the copy adds to. A dead letter carries the same, plus ``ms-error`` (JSON,
so line breaks survive) and ``ms-failed-at``.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from millstream.brokers.base import DeadLetter
from millstream.message import Message, OutgoingMessage

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = [
    "dead_letter",
    "decode",
    "delivery",
    "letter_headers",
    "private_headers",
    "replay_headers",
    "topic_headers",
]

MSG_ID = "Nats-Msg-Id"
ID = "ms-id"
KEY = "ms-key"
PUBLISHED_AT = "ms-published-at"
ATTEMPT = "ms-attempt"
ERROR = "ms-error"
FAILED_AT = "ms-failed-at"
_OURS = ("ms-", "Nats-", "nats-")


def topic_headers(out: OutgoingMessage) -> dict[str, str]:
    """The headers of ``out`` published on its topic."""
    headers = {**out.headers, MSG_ID: out.id, PUBLISHED_AT: repr(out.published_at)}
    if out.key is not None:
        headers[KEY] = out.key
    return headers


def private_headers(message: Message, before: int) -> dict[str, str]:
    """The headers of a copy of ``message`` for one group, ``before`` deliveries counted."""
    headers = {**message.headers, ID: message.id, PUBLISHED_AT: repr(message.published_at)}
    if message.key is not None:
        headers[KEY] = message.key
    headers[ATTEMPT] = str(before)
    return headers


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
    return Message(
        id=message_id,
        topic=topic,
        payload=msg.data,
        key=headers.get(KEY),
        headers=user,
        attempt=delivered + (int(before) if before else 0),
        published_at=float(published) if published else stored_ns / 1e9,
        receipt=reply,
    )


def dead_letter(
    topic: str, group: str, sequence: int, data: bytes, headers: dict[str, str]
) -> DeadLetter:
    """The ``DeadLetter`` stored at ``sequence`` of the group's dead-letter stream."""
    user = {k: v for k, v in headers.items() if not k.startswith(_OURS)}
    error = headers.get(ERROR)
    return DeadLetter(
        id=str(sequence),
        message_id=headers.get(ID, str(sequence)),
        topic=topic,
        group=group,
        payload=data,
        key=headers.get(KEY),
        headers=user,
        attempts=int(headers.get(ATTEMPT, "0")),
        error=json.loads(error) if error else "",
        failed_at=float(headers.get(FAILED_AT, "0")),
    )


def replay_headers(stored: dict[str, str]) -> dict[str, str]:
    """The headers of a dead letter put back into its group: no reason, no deliveries before."""
    headers = {k: v for k, v in stored.items() if k not in (ERROR, FAILED_AT)}
    headers[ATTEMPT] = "0"
    return headers
