"""Where the SQLite broker keeps a group's dead letters: ``Broker.layout``.

Retries have no place of their own: a retried delivery row waits in place
(state ``waiting``) until it is due.
"""

from __future__ import annotations

from millstream.brokers.base import Layout, Place

__all__ = ["layout"]

DEAD_LETTER_COLUMNS = (
    ("attempt", "deliveries the message had"),
    ("error", "why it was dead-lettered: `Type: message`"),
    ("failed_at", "when, epoch seconds"),
    ("deaths", "how often the message was dead-lettered in this group (part of the letter id)"),
)
"""A dead letter is a row of ``deliveries``: these are its columns (the message itself, with
its id, key, headers and payload, is its row of ``messages``, by ``seq``)."""


def layout(topic: str, group: str) -> Layout:
    """The table holding the dead letters of every group, ``group``'s among them."""
    return Layout(
        dead_letters=Place(
            "deliveries",
            "SQLite table",
            "one row per message per group; a dead letter is a row in state 'dead', its "
            "group the row of table groups with that gid (columns topic and name)",
        ),
        dead_letter_headers=DEAD_LETTER_COLUMNS,
    )
