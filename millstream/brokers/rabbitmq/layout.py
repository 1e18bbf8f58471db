"""Where the RabbitMQ broker keeps a group's retries and dead letters: ``Broker.layout``."""

from __future__ import annotations

from millstream.brokers.base import Layout, Place
from millstream.brokers.rabbitmq.wire import (
    HEADER_FAILED_AT,
    HEADER_LETTER_ID,
    RETRY_STEPS_MS,
    Names,
)
from millstream.message import HEADER_ATTEMPT, HEADER_ERROR, HEADER_KEY, HEADER_PUBLISHED_AT

__all__ = ["layout"]

_QUEUE = "RabbitMQ queue"

DEAD_LETTER_HEADERS = (
    (HEADER_LETTER_ID, "the letter's id, assigned once (the message id is message_id)"),
    (HEADER_KEY, "the message key, when it has one"),
    (HEADER_PUBLISHED_AT, "when the message was published, ms since the epoch"),
    (HEADER_ATTEMPT, "deliveries the message had"),
    (HEADER_ERROR, "why it was dead-lettered: `Type: message`"),
    (HEADER_FAILED_AT, "when, ms since the epoch"),
)


def layout(topic: str, group: str) -> Layout:
    """The queue, the retry queues (one per delay step) and the dead-letter queue of ``group``."""
    names = Names(topic, group)
    return Layout(
        queue=Place(
            names.queue,
            _QUEUE,
            f"the group's messages, bound to the topic's exchange {names.exchange}; its "
            "members compete for them",
        ),
        retry=(
            Place(
                names.retry_queues,
                _QUEUE,
                f"retries waiting out one delay step (the queue's TTL), then dead-lettered "
                f"back to the group's queue {names.queue}; also delayed publishes that reached "
                "it before their time",
                parameters=(("step", tuple(str(step) for step in RETRY_STEPS_MS)),),
            ),
        ),
        dead_letters=Place(names.dlq, _QUEUE, "the group's dead letters"),
        dead_letter_headers=DEAD_LETTER_HEADERS,
    )
