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
``ms-published-at`` (ms since the epoch) and, on a republished copy,
``ms-attempt`` (deliveries before that copy). A delivery's attempt is
``ms-attempt`` plus RabbitMQ's count of returns on a redelivery
(``x-delivery-count`` on quorum queues; 1 on classic ones, whose
``redelivered`` flag is all they say) plus one. What another producer wrote
is read by :mod:`millstream.brokers.rabbitmq_headers` when this module's fast
reading fails on it.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Any, cast

from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from millstream.brokers.base import DeadLetter
from millstream.brokers.rabbitmq_headers import (
    BROKER_HEADERS,
    DELIVERY_COUNT,
    HEADER_FAILED_AT,
    HEADER_LETTER_ID,
    NOT_USERS,
    careful,
    content_id,
    json_value,
    number,
    storable,
    text,
)
from millstream.message import (
    HEADER_ATTEMPT,
    HEADER_ERROR,
    HEADER_ID,
    HEADER_KEY,
    HEADER_PUBLISHED_AT,
    NO_HEADERS,
    Message,
    OutgoingMessage,
)

__all__ = [
    "HEADER_FAILED_AT",
    "HEADER_LETTER_ID",
    "RETRY_STEPS_MS",
    "Names",
    "copy",
    "dead_copy",
    "encode",
    "letter",
    "letter_id_of",
    "messages",
    "retry_step",
    "tag_of",
]

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

_PERSISTENT = 2
_SHORT = 255  # bytes an AMQP short string holds


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

    def retry(self, step_ms: int) -> str:
        return f"{self.queue}.retry.{step_ms}ms"


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


def encode(out: OutgoingMessage) -> tuple[bytes, Basic.Properties]:
    """Body and properties of a message as millstream publishes it."""
    headers: dict[str, Any] = dict(out.headers)
    if out.key is not None:
        headers[HEADER_KEY] = out.key
    headers[HEADER_PUBLISHED_AT] = int(out.published_at * 1000)
    return out.payload, Basic.Properties(
        message_id=out.id, delivery_mode=_PERSISTENT, headers=headers
    )


def messages(
    topic: str, batch: list[DeliveredMessage], owner: object, quorum: bool
) -> tuple[list[Message], int]:
    """The :class:`Message` of each delivery, receipts ``(owner, delivery tag)``, and how
    many of them are redeliveries (returned by RabbitMQ when a channel holding them closed).

    The hot path of consuming: one loop reading deliveries as millstream
    publishes them, type checks that cost nothing when they pass; a delivery
    they fail on sends it and the rest of the batch to
    :func:`~millstream.brokers.rabbitmq_headers.careful`.
    """
    out: list[Message] = []
    append = out.append
    again = 0
    try:
        for delivered in batch:
            props = delivered.header.properties
            deliver = cast(Basic.Deliver, delivered.delivery)
            body = delivered.body
            raw: dict[str, Any] | None = props.headers
            message_id = props.message_id
            key: Any = None
            stamp: Any = None
            before: Any = 0
            returns: Any = 0
            headers = NO_HEADERS
            if raw:
                headers = {}
                for name, value in raw.items():
                    if name not in NOT_USERS:
                        if type(value) is not str or type(name) is not str:
                            raise TypeError(name)
                        headers[name] = value
                key = raw.get(HEADER_KEY)
                if key is not None and type(key) is not str:
                    raise TypeError(key)
                stamp = raw.get(HEADER_PUBLISHED_AT)
                before = raw.get(HEADER_ATTEMPT, 0)
                if type(before) is not int or before < 0:
                    raise TypeError(before)
            if type(message_id) is not str or not message_id:
                message_id = _foreign_id(message_id, raw, body)
            if stamp is None:
                published = _stamped(props.timestamp)
            elif type(stamp) is int and stamp >= 0:
                published = stamp / 1000
            else:
                raise TypeError(stamp)
            if deliver.redelivered:
                returns = raw[DELIVERY_COUNT] if quorum else 1  # type: ignore[index]
                if type(returns) is not int or returns < 1:
                    raise TypeError(returns)
            append(
                Message(
                    message_id,
                    topic,
                    body,
                    key,
                    headers,
                    before + returns + 1,
                    published,
                    None,
                    None,
                    (owner, deliver.delivery_tag),
                )
            )
            if returns:
                again += 1
    except Exception:
        # Delivery number len(out) has a field that is not as encode() writes it.
        for delivered in batch[len(out) :]:
            append(careful(topic, delivered, (owner, tag_of(delivered)), quorum))
            again += bool(getattr(delivered.delivery, "redelivered", False))
    return out, again


def _foreign_id(message_id: object, raw: dict[str, Any] | None, body: bytes) -> str:
    """The id of a delivery without a ``message_id`` of millstream's: raises for an odd one."""
    if message_id is not None and message_id != "":
        raise TypeError(message_id)  # not a str (an escaped one): read carefully
    copied = raw.get(HEADER_ID) if raw else None
    if copied is None:
        return content_id(body)
    if type(copied) is not str:
        raise TypeError(copied)
    return copied


def _stamped(stamp: object) -> float:
    if stamp is None:
        return time.time()
    if isinstance(stamp, datetime.datetime):
        return stamp.timestamp()
    raise TypeError(stamp)


def copy(delivered: DeliveredMessage, **own: Any) -> Basic.Properties:
    """Properties for a republished copy of ``delivered`` with millstream headers ``own``.

    RabbitMQ's bookkeeping headers go (the copy starts a new life), as do
    ``expiration`` (a copy must not expire again) and ``user_id`` (RabbitMQ
    accepts it only from that user). What another producer wrote that pamqp
    cannot write back is made writable (bytes become a byte array, a
    timestamp out of range goes); an id that outgrew a short string once
    escaped travels in ``ms-id``, so the copy keeps it.
    """
    props = delivered.header.properties
    raw = props.headers if isinstance(props.headers, dict) else {}
    headers = {
        name: value for name, value in raw.items() if name not in BROKER_HEADERS and name not in own
    }
    headers.update({name: value for name, value in own.items() if value is not None})
    message_id: str | None = _id_of(props, raw, delivered.body)
    if message_id is not None and len(message_id.encode()) > _SHORT:
        headers[HEADER_ID], message_id = message_id, None
    else:
        headers.pop(HEADER_ID, None)
    return Basic.Properties(
        content_type=_short(props.content_type),
        content_encoding=_short(props.content_encoding),
        headers=storable(headers),
        delivery_mode=_PERSISTENT,
        priority=props.priority if isinstance(props.priority, int) else None,
        correlation_id=_short(props.correlation_id),
        reply_to=_short(props.reply_to),
        message_id=message_id,
        timestamp=props.timestamp if isinstance(props.timestamp, datetime.datetime) else None,
        message_type=_short(props.message_type),
        app_id=_short(props.app_id),
    )


def _short(value: str | None) -> str | None:
    """A short string property as a copy can carry it: escaped ones that grew too long go."""
    if value is None or len(value.encode()) > _SHORT:
        return None
    return str(value)


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


def letter(names: Names, delivered: DeliveredMessage) -> DeadLetter:
    """The :class:`DeadLetter` a message in the dead-letter queue stands for; never raises."""
    props = delivered.header.properties
    raw = props.headers if isinstance(props.headers, dict) else {}
    found = careful(names.topic, delivered, None, False, warn=False)
    letter_id = raw.get(HEADER_LETTER_ID)
    failed_ms = number(raw.get(HEADER_FAILED_AT), float, 0.0, minimum=0, shown=HEADER_FAILED_AT)
    return DeadLetter(
        id=text(letter_id, HEADER_LETTER_ID) if letter_id is not None else found.id,
        message_id=found.id,
        topic=names.topic,
        group=names.group,
        payload=found.payload,
        key=found.key,
        headers={k: json_value(v) for k, v in raw.items() if k not in NOT_USERS},
        attempts=number(raw.get(HEADER_ATTEMPT), int, 0, minimum=0, shown=HEADER_ATTEMPT),
        error=text(raw.get(HEADER_ERROR, ""), HEADER_ERROR),
        failed_at=failed_ms / 1000,
    )


def letter_id_of(delivered: DeliveredMessage) -> str:
    """The id a dead letter is listed, replayed and purged by."""
    props = delivered.header.properties
    raw = props.headers if isinstance(props.headers, dict) else {}
    letter_id = raw.get(HEADER_LETTER_ID)
    if letter_id is not None:
        return text(letter_id, HEADER_LETTER_ID)
    return _id_of(props, raw, delivered.body)


def _id_of(props: Basic.Properties, raw: dict[str, Any], body: bytes) -> str:
    """The message id as :func:`~millstream.brokers.rabbitmq_headers.careful` reads it."""
    if isinstance(props.message_id, str) and props.message_id:
        return str(props.message_id)
    if HEADER_ID in raw:
        return text(raw[HEADER_ID], HEADER_ID)
    return content_id(body)
