"""What RabbitMQ returns, counted, when a subscription's channel is lost: remembered per queue.

When a member's connection dies, RabbitMQ returns everything its channel
held and counts a delivery for each (``x-delivery-count``): also for what
sat in the prefetch window and was never handed out, and for what RabbitMQ
had sent that never reached the subscription (on the wire, in a socket
buffer, in aiormq's read buffer when the connection failed). None of those
is an attempt: under a flapping network healthy messages would use up
their retries and be buried as "delivered too often without an outcome".

The broker's connection object outlives its subscriptions, so it keeps a
:class:`Returns` per queue:

- each delivery a lost subscription had and never handed out, by message
  id with RabbitMQ's count: its next delivery here is corrected by one, and
  so is every later one, until it is settled (the runtime judges on the
  corrected numbers). What was handed out is the runtime's to correct
  (``runtime/attempts.py`` knows which handlers started); it is remembered
  only so that returns beyond that one are not taken for somebody else's.
- per loss, an allowance for what may have been on its way: the prefetch
  window less what the channel held, an upper bound. RabbitMQ hands
  returned messages out before any other, so a return nobody here saw
  that comes back before the first delivery that is no redelivery was on
  its way to one of those losses: it is corrected by one per such loss (as
  many as RabbitMQ counted returns), which spends their allowance. The
  first delivery that is no redelivery ends them: whatever was on its way
  has come back by then, here or to another member.

A process that crashes forgets all of it, so a crash still counts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from millstream.message import Message

__all__ = ["Returns"]


@dataclass(eq=False, slots=True)
class _Loss:
    unseen: int
    """Deliveries RabbitMQ may have sent that never arrived, not yet accounted for."""


@dataclass(slots=True)
class _Entry:
    seen: int
    """RabbitMQ's count (the attempt it makes) at the delivery last seen."""
    extra: int
    """Returns it counted that were no attempt."""
    unhanded: bool
    """Held at a loss and never handed out: its next return is no attempt."""
    lost: bool
    """Held at a loss: its next return is explained (here or by the runtime)."""


class Returns:
    """Per queue: what lost subscriptions of this process held, by message id."""

    __slots__ = ("_entries", "_recent", "most")

    def __init__(self, most: int) -> None:
        self._entries: dict[str, _Entry] = {}
        self._recent: list[_Loss] = []  # losses whose deliveries may still come back
        self.most = most
        """How many messages are remembered at most (the oldest go first)."""

    def __bool__(self) -> bool:
        return bool(self._entries) or bool(self._recent)

    def lost(
        self,
        unseen: int,
        unhanded: Iterable[tuple[str, int, int]],
        handed: Iterable[tuple[str, int]],
    ) -> None:
        """A channel was lost holding ``unhanded`` deliveries (id, RabbitMQ's count, its
        returns) and ``handed`` ones (id, count), with up to ``unseen`` more on their way."""
        entries = self._entries
        for message_id, counted, returns in unhanded:
            extra, _ = self._see(message_id, counted, returns, spend=True)
            entries[message_id] = _Entry(counted, extra, True, True)
        for message_id, counted in handed:  # corrected when handed out: nothing to spend
            entry = entries.get(message_id)
            extra = entry.extra if entry is not None and counted >= entry.seen else 0
            entries[message_id] = _Entry(counted, extra, False, True)
        if unseen > 0:
            self._recent.append(_Loss(unseen))
        excess = len(entries) - self.most
        if excess > 0:  # oldest first: a redelivery comes soon, or to another member
            for stale in list(itertools.islice(entries, excess)):
                del entries[stale]

    def correct(self, messages: Sequence[Message], returns_of: Callable[[Message], int]) -> int:
        """Take the returns that were no attempt off each message's ``attempt``
        (``returns_of``: RabbitMQ's returns of it, 0 for a first delivery); returns how
        many came back from losses here only, no member having gone without them."""
        entries = self._entries
        given_back = 0
        for message in messages:
            if message.id not in entries and not self._recent:
                continue
            counted = message.attempt
            extra, ours = self._see(message.id, counted, returns_of(message), spend=True)
            given_back += ours
            if extra:
                entries[message.id] = _Entry(counted, extra, False, False)
                message.attempt = max(1, counted - extra)
            else:
                entries.pop(message.id, None)
        return given_back

    def corrected(self, message_id: str, counted: int, returns: int) -> int:
        """The attempt of a delivery RabbitMQ counted as ``counted``, without noting it."""
        extra, _ = self._see(message_id, counted, returns, spend=False)
        return max(1, counted - extra)

    def settled(self, message_ids: Iterable[str]) -> None:
        """These messages are acked, copied (retry, dead letter, release) or gone."""
        entries = self._entries
        for message_id in message_ids:
            entries.pop(message_id, None)

    def _see(self, message_id: str, counted: int, returns: int, *, spend: bool) -> tuple[int, bool]:
        """(returns that were no attempt, whether every return since it was last seen was
        one) for a delivery RabbitMQ counted as ``counted`` with ``returns`` returns."""
        if not returns and spend:
            self._recent.clear()  # returned messages come first: none is on its way now
        entry = self._entries.get(message_id)
        if entry is None:
            extra, unexplained, ours = 0, returns, returns > 0
        elif counted < entry.seen:
            return 0, False  # a fresh copy (replayed from the dead letters): starts over
        else:
            extra = entry.extra + (entry.unhanded and counted > entry.seen)
            unexplained = counted - entry.seen - entry.lost
            ours = counted > entry.seen and (entry.unhanded or not entry.lost)
        if unexplained <= 0 or not self._recent:
            return extra, ours and unexplained <= 0
        # Returns nobody here saw: on their way to as many recent losses.
        losses = self._recent[-unexplained:]
        if spend:
            for loss in losses:
                loss.unseen -= 1
            self._recent = [loss for loss in self._recent if loss.unseen > 0]
        return extra + len(losses), ours and len(losses) == unexplained
