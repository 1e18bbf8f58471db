"""Where the NATS broker keeps a group's dead letters: ``Broker.layout``.

Retries have no place of their own: a retry is a ``-NAK`` with the delay,
and JetStream redelivers the message to the group's consumer.
"""

from __future__ import annotations

from millstream.brokers.base import Layout, Place
from millstream.brokers.nats.names import Names
from millstream.brokers.nats.wire import ATTEMPT, ERROR, FAILED_AT, ID, KEY, PUBLISHED_AT

__all__ = ["layout"]

DEAD_LETTER_HEADERS = (
    (ID, "the message id"),
    (PUBLISHED_AT, "when the message was published, epoch seconds"),
    (KEY, "the message key, when it has one"),
    (ATTEMPT, "deliveries the message had"),
    (ERROR, "why it was dead-lettered, `Type: message` as a JSON string"),
    (FAILED_AT, "when, epoch seconds"),
)


def layout(topic: str, group: str) -> Layout:
    """The subject of ``group``'s dead-letter stream (a stream per topic and group)."""
    names = Names(topic, group)
    return Layout(
        dead_letters=Place(
            names.dead,
            "JetStream subject",
            f"the group's dead letters, the only subject of stream {names.dead_stream}",
        ),
        dead_letter_headers=DEAD_LETTER_HEADERS,
    )
