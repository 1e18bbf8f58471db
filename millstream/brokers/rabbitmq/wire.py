"""How millstream's names and messages look in RabbitMQ.

Names of topic ``T`` and group ``G`` (``Q`` = ``T.G``):

=====================  ==========================================================
``T``                  fanout exchange: the topic; its alternate exchange is ...
``T.unrouted``         fanout exchange and queue: what was published while no
                       group was bound, handed to the first group that subscribes
``Q``                  the group's durable queue (quorum by default), bound to ``T``
``Q.retry.<ms>ms``     retry queue with a queue-wide TTL of ``ms``, dead-lettering
                       back to ``Q`` through the default exchange
``Q.dlq``              the group's dead letters (classic queue)
=====================  ==========================================================

A message is the body plus AMQP properties: ``message_id`` is the millstream
id, the headers hold the user's headers and ``ms-key``,
``ms-published-at`` (ms since the epoch), on a delayed publish
``ms-deliver-at`` (ms since the epoch: a member that gets it earlier parks
it in the retry queue of the longest step not longer than the time left,
again until it is due) and, on a republished copy, ``ms-attempt``
(deliveries before that copy). A delivery's attempt is
``ms-attempt`` plus the queue's own count of returns (``x-delivery-count`` on
quorum queues, the ``redelivered`` flag on classic ones) plus one. Reading
a delivery is :mod:`millstream.brokers.rabbitmq.reading`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, cast

from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from millstream.brokers.rabbitmq.frames import UNREADABLE
from millstream.message import (
    HEADER_ATTEMPT,
    HEADER_DELIVER_AT,
    HEADER_ERROR,
    HEADER_KEY,
    HEADER_PUBLISHED_AT,
    OutgoingMessage,
)

__all__ = [
    "BROKER_HEADERS",
    "HEADER_FAILED_AT",
    "HEADER_LETTER_ID",
    "OWN_HEADERS",
    "RETRY_STEPS_MS",
    "Names",
    "content_id",
    "copy",
    "dead_copy",
    "encode",
    "hold_step",
    "retry_step",
    "tag_of",
]

HEADER_LETTER_ID = "ms-dead-id"
HEADER_FAILED_AT = "ms-failed-at"

# Retry delays are rounded up to one of these (ms): one queue per step, each
# with a queue-wide TTL, so messages expire strictly in order (a per-message
# TTL expires only at the head of a queue and a long delay would hold up a
# short one behind it). Steps grow by at most 5/3, so a delay is never
# shorter than asked and at most 2/3 longer (50 ms at least); delays over an
# hour are capped at an hour.
RETRY_STEPS_MS = (
    50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000,
    15_000, 20_000, 30_000, 45_000, 60_000, 90_000, 120_000, 180_000, 300_000,
    600_000, 900_000, 1_200_000, 1_800_000, 2_700_000, 3_600_000,
)  # fmt: skip

# Headers RabbitMQ adds (dead-lettering, quorum queues), the one a careful
# reading adds, and millstream's own: none is the user's business, and a
# republished copy drops all but the last.
BROKER_HEADERS = frozenset(
    {
        UNREADABLE,
        "x-delivery-count",
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
        HEADER_KEY,
        HEADER_PUBLISHED_AT,
        HEADER_ATTEMPT,
        HEADER_DELIVER_AT,
        HEADER_ERROR,
        HEADER_LETTER_ID,
        HEADER_FAILED_AT,
    }
)
_PERSISTENT = 2


@dataclass(frozen=True, slots=True)
class Names:
    """The exchange and queue names of one topic and group."""

    topic: str
    group: str

    @property
    def exchange(self) -> str:
        return self.topic

    @property
    def unrouted(self) -> str:
        return f"{self.topic}.unrouted"

    @property
    def queue(self) -> str:
        return f"{self.topic}.{self.group}"

    @property
    def dlq(self) -> str:
        return f"{self.queue}.dlq"

    @property
    def retry_queues(self) -> str:
        """The name of every retry queue, ``{step}`` standing for its step in milliseconds."""
        return f"{self.queue}.retry.{{step}}ms"

    def retry(self, step_ms: int) -> str:
        return self.retry_queues.replace("{step}", str(step_ms), 1)


def tag_of(delivered: DeliveredMessage) -> int:
    """The delivery tag of a delivery or a ``basic.get`` answer."""
    return cast(int, cast(Basic.Deliver, delivered.delivery).delivery_tag)


def retry_step(delay: float) -> int:
    """The retry queue step for ``delay`` seconds: the smallest not shorter; 0 for none."""
    wanted = delay * 1000
    if wanted <= 0:
        return 0
    for step in RETRY_STEPS_MS:
        if step >= wanted:
            return step
    return RETRY_STEPS_MS[-1]


def hold_step(left: float) -> int:
    """The retry queue step that holds back a delayed publish with ``left`` seconds to go:
    the longest not longer (it comes back early and is held again for the rest), or
    the shortest."""
    wanted = left * 1000
    fitting = [step for step in RETRY_STEPS_MS if step <= wanted]
    return fitting[-1] if fitting else RETRY_STEPS_MS[0]


def encode(out: OutgoingMessage) -> tuple[bytes, Basic.Properties]:
    """Body and properties of a message as millstream publishes it."""
    headers: dict[str, Any] = dict(out.headers)
    if out.key is not None:
        headers[HEADER_KEY] = out.key
    headers[HEADER_PUBLISHED_AT] = int(out.published_at * 1000)
    if out.deliver_at is not None:
        headers[HEADER_DELIVER_AT] = int(out.deliver_at * 1000)
    return out.payload, Basic.Properties(
        message_id=out.id, delivery_mode=_PERSISTENT, headers=headers
    )


def copy(delivered: DeliveredMessage, **own: Any) -> Basic.Properties:
    """Properties for a republished copy of ``delivered`` with millstream headers ``own``.

    RabbitMQ's bookkeeping headers go (the copy starts a new life), as do
    ``expiration`` (a copy must not expire again) and ``user_id`` (RabbitMQ
    accepts it only from that user).
    """
    props = delivered.header.properties
    headers = {
        name: _encodable(value)
        for name, value in (props.headers or {}).items()
        if name not in BROKER_HEADERS and name not in own
    }
    headers.update({name: value for name, value in own.items() if value is not None})
    message_id = props.message_id or content_id(delivered)
    return Basic.Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        headers=headers,
        delivery_mode=_PERSISTENT,
        priority=props.priority,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        message_id=message_id,
        timestamp=props.timestamp,
        message_type=props.message_type,
        app_id=props.app_id,
    )


def _encodable(value: Any) -> Any:
    """``value`` as pamqp can write it again: it reads a long string that is not UTF-8
    as ``bytes``, which it cannot write; a byte array carries the same bytes."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {name: _encodable(inner) for name, inner in value.items()}
    if isinstance(value, list):
        return [_encodable(inner) for inner in value]
    return value


def dead_copy(
    delivered: DeliveredMessage, letter_id: str, attempt: int, error: str
) -> Basic.Properties:
    """Properties of ``delivered``'s copy in the dead-letter queue."""
    return copy(
        delivered,
        **{
            HEADER_ATTEMPT: attempt,
            HEADER_ERROR: error,
            HEADER_LETTER_ID: letter_id,
            HEADER_FAILED_AT: int(time.time() * 1000),
        },
    )


def content_id(delivered: DeliveredMessage) -> str:
    """An id for a message another tool published without one, the same on every
    redelivery: a hash of its body and of the properties RabbitMQ leaves alone, so two
    messages with one body tell apart when anything else (a timestamp, a correlation id,
    a header) does."""
    props = delivered.header.properties
    headers = props.headers or {}
    kept = sorted(
        (name, repr(value)) for name, value in headers.items() if name not in BROKER_HEADERS
    )
    stable = (
        props.content_type,
        props.content_encoding,
        props.correlation_id,
        props.reply_to,
        props.timestamp,
        props.message_type,
        props.app_id,
        kept,
    )
    digest = hashlib.blake2b(delivered.body, digest_size=12)
    digest.update(repr(stable).encode("utf-8", "backslashreplace"))
    return digest.hexdigest()
