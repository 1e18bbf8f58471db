"""Where the Kafka broker keeps a group's retries and dead letters: ``Broker.layout``."""

from __future__ import annotations

from millstream.brokers.base import Layout, Place
from millstream.brokers.kafka.wire import (
    HEADER_DUE,
    HEADER_FAILED_AT,
    HEADER_GROUP,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    HEADER_TOMBSTONE,
    delay_topic,
    dlq_topic,
    retry_topic,
)
from millstream.message import HEADER_ATTEMPT, HEADER_ERROR, HEADER_ID, HEADER_PUBLISHED_AT

__all__ = ["layout"]

_TOPIC = "Kafka topic"

DEAD_LETTER_HEADERS = (
    (HEADER_ID, "the message id"),
    (HEADER_PUBLISHED_AT, "when the message was published, epoch seconds"),
    (HEADER_GROUP, "the group that gave up on the message"),
    (HEADER_SOURCE_TOPIC, "the topic the message was read from"),
    (HEADER_SOURCE_PARTITION, "its partition there"),
    (HEADER_SOURCE_OFFSET, "its offset there"),
    (HEADER_ATTEMPT, "deliveries the message had"),
    (HEADER_ERROR, "why it was dead-lettered: `Type: message`"),
    (HEADER_FAILED_AT, "when, epoch seconds"),
    (HEADER_TOMBSTONE, "on a tombstone only: the id of a letter replayed or purged"),
)


def layout(topic: str, group: str) -> Layout:
    """The retry, delay and dead-letter topics of ``topic`` for ``group``."""
    return Layout(
        retry=(
            Place(
                retry_topic(topic, group),
                _TOPIC,
                "one group's retries and replayed dead letters, each with its attempts "
                f"({HEADER_ATTEMPT}) and the time it is due ({HEADER_DUE})",
            ),
        ),
        delay=Place(
            delay_topic(topic),
            _TOPIC,
            f"delayed publishes to the topic, each with the time it is due ({HEADER_DUE}); "
            "every group reads it",
        ),
        dead_letters=Place(
            dlq_topic(topic),
            _TOPIC,
            f"the dead letters of every group of the topic, each naming its group "
            f"({HEADER_GROUP}), and tombstones of letters replayed or purged",
        ),
        dead_letter_headers=DEAD_LETTER_HEADERS,
    )
