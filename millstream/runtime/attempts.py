"""Deliveries the broker counted that were no attempt: a lost connection is no crash.

When a session ends on a lost connection, the messages it held but never
started, and those handled whose ack could not be settled, go back to the
broker, which counts a delivery for each (the lease ran out, or the
connection that held them went away), and some brokers carry that count on
through later retries. Only a delivery whose handler started and did not
finish is an attempt, or a flapping network would use up the retries of
healthy messages and dead-letter them as "delivered too often without an
outcome".

:class:`UncountedDeliveries` remembers those messages by id and takes the
extra count off every later delivery of them, until they are settled. A
process that crashes forgets, so a crash loop still counts every delivery.
A message whose handler succeeded here but whose ack was lost is acked again
when it comes back, without running its handler a second time; one whose
dead-letter outcome was lost goes to the dead letters again, with its reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from millstream.message import Message

__all__ = ["ACKED", "UncountedDeliveries"]


ACKED = ""
"""The outcome of a message whose handler succeeded; any other outcome is a dead letter's
reason."""


class UncountedDeliveries:
    """Per consumer: message id -> (the broker's attempt last seen, deliveries it counted
    that were no attempt, whether the next delivery follows one that ended without an
    attempt, the outcome it already had here if its settling was lost: ``ACKED`` or the
    reason it was dead-lettered, else ``None``)."""

    __slots__ = ("_entries", "_most")

    def __init__(self, most: int) -> None:
        self._entries: dict[str, tuple[int, int, bool, str | None]] = {}
        self._most = most

    def __bool__(self) -> bool:
        return bool(self._entries)

    def remember(self, messages: Iterable[Message], outcome: str | None = None) -> None:
        """These deliveries end unstarted, or with an ``outcome`` that was never settled
        (``ACKED``, or a dead letter's reason): the next delivery of each may be counted by
        the broker, and is no attempt."""
        entries = self._entries
        for message in messages:
            entry = entries.get(message.id)
            extra = entry[1] if entry is not None else 0
            entries[message.id] = (message.attempt + extra, extra, True, outcome)
        excess = len(entries) - self._most
        if excess > 0:  # oldest first: a redelivery comes soon, or to another member
            for stale in list(itertools.islice(entries, excess)):
                del entries[stale]

    def correct(self, messages: Iterable[Message]) -> list[tuple[Message, str]]:
        """Take the deliveries that were no attempt off each message's ``attempt``; returns
        the messages that already had an outcome here whose settling was lost, with it:
        apply it again, do not run them."""
        entries = self._entries
        decided: list[tuple[Message, str]] = []
        for message in messages:
            entry = entries.get(message.id)
            if entry is None:
                continue
            seen, extra, after_lost, outcome = entry
            counted = message.attempt
            if counted < seen:  # replayed from the dead letters: a fresh start
                del entries[message.id]
                continue
            if outcome is not None:
                decided.append((message, outcome))
            if after_lost and counted > seen:
                extra += 1
            if extra or outcome is not None:
                entries[message.id] = (counted, extra, False, outcome)
                message.attempt = max(1, counted - extra)
            else:
                del entries[message.id]
        return decided

    def settled(self, messages: Iterable[Message]) -> None:
        """These messages are acked or dead for good: no delivery of them comes again."""
        entries = self._entries
        for message in messages:
            entries.pop(message.id, None)
