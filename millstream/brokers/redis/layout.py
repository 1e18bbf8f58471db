"""Where the Redis broker keeps a group's retries and dead letters: ``Broker.layout``."""

from __future__ import annotations

from millstream.brokers.base import Layout, Place
from millstream.brokers.redis.wire import Keys

__all__ = ["layout"]

DEAD_LETTER_FIELDS = (
    ("id", "the message id"),
    ("published_at", "when the message was published, epoch seconds"),
    ("payload", "the payload as it arrived"),
    ("key", "the message key, when it has one"),
    ("headers", "the message's headers, a JSON object, when it has any"),
    ("attempts", "deliveries the message had"),
    ("error", "why it was dead-lettered: `Type: message`"),
    ("failed_at", "when, epoch seconds by the Redis server's clock"),
)
"""A dead letter is a stream entry: these are its fields (Redis streams have no headers)."""


def layout(topic: str, group: str) -> Layout:
    """The retry keys and the dead-letter stream of ``group`` on ``topic``."""
    keys = Keys(topic, group)
    return Layout(
        retry=(
            Place(
                keys.delayed.decode(),
                "Redis sorted set",
                "one group's retries waiting for their time (score: when due), and delayed "
                "publishes a member read before their time",
            ),
            Place(
                keys.retry.decode(),
                "Redis stream",
                "one group's due retries, released messages and replayed dead letters, "
                "read with the topic",
            ),
        ),
        dead_letters=Place(keys.dlq.decode(), "Redis stream", "one group's dead letters"),
        dead_letter_headers=DEAD_LETTER_FIELDS,
    )
