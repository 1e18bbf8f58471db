"""What RabbitMQ returns, counted, when a subscription's channel is lost: remembered per queue.

A member takes deliveries into its prefetch window before the runtime
fetches them. When its connection is lost, RabbitMQ returns everything the
channel held and counts a delivery for each (``x-delivery-count`` goes up):
also for what sat in the window and never reached a handler, and for what
RabbitMQ had sent that never reached the subscription (on the wire, in a
socket buffer, in aiormq's buffers when the connection failed). None of those is an
attempt: under a flapping network a healthy message would use up its retries
and be dead-lettered as "delivered too often without an outcome".

The broker object outlives its subscriptions, so it keeps, per queue, a
:class:`Returns`:

- the id of each delivery a lost subscription had received and never handed
  out, with the attempt RabbitMQ had counted: the next delivery of it that
  RabbitMQ counted higher is corrected by one, for every such loss, until it
  is settled. The runtime does the same for what it was handed and never
  started (``runtime/attempts.py``), so the two never correct one loss twice.
- how many deliveries each loss may have had on their way (the prefetch
  window less what the channel held: an upper bound). RabbitMQ gives returned
  messages to consumers before any other, so a redelivery nobody here knew
  that arrives while such losses are recent was on its way to one of them:
  it is corrected by one per such loss (as many as RabbitMQ counted returns),
  and spends their allowance. The first delivery that is no redelivery ends
  them: whatever was on its way has come back by then, here or elsewhere.

A process that crashes forgets all of it: a crash loop still counts every
delivery. The losses also say which member held what, so a member that gets
those messages back can say whose they were when it logs the takeover.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from millstream.message import Message

__all__ = ["Loss", "Returns"]


@dataclass(eq=False, slots=True)
class Loss:
    """A subscription of this process whose channel was lost while holding messages."""

    member: str
    at: float
    """``time.monotonic()`` when it was noticed."""
    unseen: int = 0
    """Deliveries RabbitMQ may have sent it that never arrived: an upper bound, spent as
    redeliveries nobody here knew come back."""


@dataclass(slots=True)
class _Entry:
    seen: int
    """RabbitMQ's attempt at the delivery last seen."""
    extra: int
    """Returns RabbitMQ counted that were no attempt."""
    after_loss: bool
    """The next delivery follows a loss of it unhanded: one more to take off."""
    loss: Loss | None
    """The loss that returns it, until its next delivery."""


class Returns:
    """Per queue: what lost subscriptions of this process held, by message id."""

    __slots__ = ("_entries", "_recent", "most")

    def __init__(self, most: int) -> None:
        self._entries: dict[str, _Entry] = {}
        self._recent: list[Loss] = []  # losses that may still have deliveries coming back
        self.most = most
        """How many messages are remembered at most (the oldest go first)."""

    def __bool__(self) -> bool:
        return bool(self._entries) or bool(self._recent)

    def lost(
        self,
        loss: Loss,
        buffered: Iterable[tuple[str, int, int]],
        handed: Iterable[tuple[str, int]],
    ) -> None:
        """A channel was lost holding ``buffered`` deliveries never handed out (id, attempt
        and returns RabbitMQ counted), whose next delivery is no attempt, and ``handed``
        ones (id, attempt), whose next delivery the runtime judges; all come back as
        ``loss``'s."""
        entries = self._entries
        for message_id, counted, returns in buffered:
            extra, _ = self._see(message_id, counted, returns, spend=True)
            entries[message_id] = _Entry(counted, extra, True, loss)
        for message_id, counted in handed:
            # Already seen when it was handed out: nothing is spent or taken off again.
            entry = entries.get(message_id)
            extra = 0 if entry is None or counted < entry.seen else entry.extra
            entries[message_id] = _Entry(counted, extra, False, loss)
        if loss.unseen > 0:
            self._recent.append(loss)
        excess = len(entries) - self.most
        if excess > 0:  # oldest first: a redelivery comes soon, or to another member
            for stale in list(itertools.islice(entries, excess)):
                del entries[stale]

    def correct(
        self, messages: Sequence[Message], returns_of: Callable[[Message], int]
    ) -> Counter[Loss]:
        """Take the returns that were no attempt off each message's ``attempt``
        (``returns_of``: what RabbitMQ counted, 0 for a first delivery); returns how many
        came back from each loss of this process."""
        entries = self._entries
        back: Counter[Loss] = Counter()
        for message in messages:
            if message.id not in entries and not self._recent:
                continue
            counted = message.attempt
            extra, loss = self._see(message.id, counted, returns_of(message), spend=True)
            if loss is not None:
                back[loss] += 1
            if extra:
                entries[message.id] = _Entry(counted, extra, False, None)
                message.attempt = max(1, counted - extra)
            else:
                entries.pop(message.id, None)
        return back

    def corrected(self, message_id: str, counted: int, returns: int) -> int:
        """The attempt of a delivery RabbitMQ counted as ``counted``, without noting it."""
        extra, _ = self._see(message_id, counted, returns, spend=False)
        return max(1, counted - extra)

    def settled(self, message_ids: Iterable[str]) -> None:
        """These messages are acked, copied (retry, dead letter, release) or gone."""
        entries = self._entries
        for message_id in message_ids:
            entries.pop(message_id, None)

    def _see(
        self, message_id: str, counted: int, returns: int, *, spend: bool
    ) -> tuple[int, Loss | None]:
        """(returns that were no attempt, the loss it came back from) of a delivery."""
        if not returns and spend:
            self._recent.clear()  # returned messages come first: none is on its way now
        entry = self._entries.get(message_id)
        if entry is None:
            extra, unexplained, loss = 0, returns, None
        elif counted < entry.seen:
            return 0, None  # a fresh copy (replayed from the dead letters): starts over
        else:
            # One return since it was last seen is the loss that held it: taken off
            # here when it sat unhanded, by the runtime when it was handed out.
            extra = entry.extra + (entry.after_loss and counted > entry.seen)
            unexplained = counted - entry.seen - (entry.loss is not None)
            loss = entry.loss
        if unexplained <= 0 or not self._recent:
            return extra, loss
        # Returns nobody here saw: on its way to as many recent losses.
        losses = self._recent[-unexplained:]
        if spend:
            for recent in losses:
                recent.unseen -= 1
            self._recent = [recent for recent in self._recent if recent.unseen > 0]
        return extra + len(losses), loss or losses[-1]
