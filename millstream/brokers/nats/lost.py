"""Deliveries a lost connection swallowed: the server counted them, no handler started.

JetStream counts a delivery when it sends it. When a member's connection
goes, three kinds of deliveries end that the runtime never saw, so its own
correction (``runtime/attempts.py``: what it held unstarted, or handled
but unacked) cannot cover them. Each comes back counted once more:

- **Received, never handed out**: what the member held for its next fetch.
  Known exactly: the subscription gives them to its broker object when it
  closes on a dead connection, and their next delivery (taken back at once
  by a successor under the member's name, or after ``ack_wait``) has one
  delivery taken off its ``attempt``, as has every delivery after it.
- **Sent, never received**: what the server sent the member's open pull
  request as the connection went (in the network, or in a socket buffer
  that the reset discarded; a server that has not yet noticed a cut still
  answers a waiting request into it). They come back after ``ack_wait``.
- **Counted, never sent** (NATS 2.9): a redelivery that was due when the
  server found the waiting request's connection gone is counted and put
  back, not sent, and comes back after ``ack_wait`` counted twice. At most
  one per lost request.

Which messages the last two were, the client cannot know. They are
recognised by elimination: a redelivery with deliveries before it that no
member of the group in this broker object received, since its last retry
(the retry notes of :mod:`millstream.brokers.nats.members`), had those
taken by a lost request of ours or by another member whose lease ran out.
Each loss has a *budget*: what its open request could still deliver, but
no more than the deliveries the consumer made after the last one the
member received (its delivery sequence when a member subscribes again: 0
for a request left waiting on an idle consumer), plus the one counted and
never sent. Until ``2 * lease + 10 s`` after the loss, such deliveries are
taken off while the budget lasts, one per loss and message (a request
delivers a message once).

What that can get wrong, both bounded: a delivery of ours that comes back
to another process, later than that, in a loss with its budget spent, or
whose next delivery is itself lost before a fetch hands it out (it is
judged when handed out), still counts (as before: too many attempts). A
redelivery of what another
member held when it crashed or stalled past its lease, arriving in the
window while a budget is left over (the lost request delivered less than
it could, and other members' deliveries made the bound loose), has one
delivery per loss taken off that was an attempt: at most the budget, once.

Only this broker object remembers (one process): a crash forgets it all,
so a crash loop counts every delivery.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass

from millstream.brokers.nats.wire import delivery
from millstream.message import Message

__all__ = ["LostDeliveries", "consumer_sequence"]

_GRACE = 10.0  # seconds a budget outlasts two leases after its loss
_UNHANDED = ""  # an entry's last delivery was never handed out
_GONE = "-"  # handed out, on a connection now lost: nothing settles it


def consumer_sequence(reply: str) -> int:
    """The consumer's delivery sequence in a JetStream acknowledgement subject."""
    tokens = reply.split(".")
    return int(tokens[6 if len(tokens) == 9 else 8])


@dataclass(slots=True)
class _Budget:
    """Deliveries one lost pull request may have swallowed, and until when they come back."""

    count: int
    latest: float  # monotonic


class LostDeliveries:
    """One group's deliveries (in one broker object) that lost connections swallowed.

    Entries: stream sequence -> (the last delivery of it a member here
    received, deliveries counted that were no attempt, and the acknowledgement
    subject of that delivery if a member here can still settle it, else
    ``_GONE``, or ``_UNHANDED`` if it was never handed out). Settling
    forgets those handed out at the cost of a dict lookup per outcome; the
    others go, oldest first, when there are more than the group's cap on
    unacknowledged messages.
    """

    __slots__ = ("_budgets", "_entries", "_handed", "_lease", "_most", "_waiting")

    def __init__(self, lease: float, most: int) -> None:
        self._lease = lease
        self._most = most
        self._entries: dict[int, tuple[int, int, str]] = {}
        self._handed: dict[str, int] = {}  # acknowledgement subject -> stream sequence
        self._budgets: list[_Budget] = []
        # Losses whose budget waits for the consumer's sequence on the next subscribe:
        # (deliveries the request still owed, lost at, the last consumer sequence seen).
        self._waiting: list[tuple[int, float, int]] = []

    def __bool__(self) -> bool:
        return bool(self._entries or self._budgets)

    def record(
        self,
        held: Iterable[str],
        ready: Iterable[Message],
        owed: int,
        after: int,
    ) -> None:
        """A member's connection went while it held ``held`` (acknowledgement subjects;
        ``ready``: those never handed out).

        ``owed``: what its open pull request could still deliver; ``after``: the
        consumer sequence of the last delivery it received.
        """
        unhanded = {message.receipt for message in ready}
        for receipt in held:
            delivered, sequence, _ = delivery(receipt)
            extra = self._pop(sequence)[1]
            handed = _UNHANDED if receipt in unhanded else _GONE
            self._entries[sequence] = (delivered, extra, handed)
        self._trim()
        if owed > 0:
            self._waiting.append((owed, time.monotonic(), after))

    def resumed(self, delivered: int) -> None:
        """A member subscribed again; ``delivered``: the consumer's delivery sequence now."""
        lease = self._lease
        for owed, lost_at, after in self._waiting:
            # What it delivered (no more than the consumer did since), and one phantom.
            count = min(owed, max(0, delivered - after)) + 1
            self._budgets.append(_Budget(count, lost_at + 2 * lease + _GRACE))
        self._waiting.clear()

    def correct(self, redelivered: Iterable[Message]) -> list[tuple[Message, int]]:
        """Take off each redelivery's ``attempt`` what is known to have been no attempt.

        Returns those with deliveries before this one that no member here
        received (another member's, or swallowed by a lost request: see
        :meth:`charge`), each with the last delivery of it a member here
        received (0: none known).
        """
        unseen: list[tuple[Message, int]] = []
        for message in redelivered:
            delivered, sequence, _ = delivery(message.receipt)
            seen, extra, handed = self._pop(sequence)
            if delivered <= seen:  # a stream made anew: not the message we knew
                seen, extra, handed = 0, 0, _GONE
            if handed == _UNHANDED:
                extra += 1  # its last delivery here ended in a lost connection, unstarted
            if extra:
                message.attempt = max(1, message.attempt - extra)
                self._keep(message, sequence, delivered, extra)
            if delivered > seen + 1:
                unseen.append((message, seen))
        return unseen

    def charge(self, message: Message, unseen: int, now: float) -> int:
        """``message`` had ``unseen`` deliveries since its last retry that reached no member
        here: take off ``attempt`` those lost requests could have swallowed (a request
        delivers a message once: one per loss at most); returns how many."""
        budgets = self._budgets
        budgets[:] = [b for b in budgets if b.count > 0 and now <= b.latest]
        taken = 0
        for budget in budgets[:unseen]:
            budget.count -= 1
            taken += 1
        if taken:
            delivered, sequence, _ = delivery(message.receipt)
            message.attempt = max(1, message.attempt - taken)
            self._keep(message, sequence, delivered, self._pop(sequence)[1] + taken)
        return taken

    def settled(self, receipts: Iterable[str]) -> None:
        """These deliveries are acked or dead for good: they never come back."""
        handed = self._handed
        if not handed:
            return
        for receipt in receipts:
            sequence = handed.pop(receipt, None)
            if sequence is not None:
                del self._entries[sequence]

    def _keep(self, message: Message, sequence: int, delivered: int, extra: int) -> None:
        """``message``, handed out now, had ``extra`` deliveries that were no attempt."""
        self._entries[sequence] = (delivered, extra, message.receipt)
        self._handed[message.receipt] = sequence
        self._trim()

    def _pop(self, sequence: int) -> tuple[int, int, str]:
        entry = self._entries.pop(sequence, None)
        if entry is None:
            return 0, 0, _GONE
        self._handed.pop(entry[2], None)
        return entry

    def _trim(self) -> None:
        excess = len(self._entries) - self._most
        if excess > 0:  # oldest first: a redelivery comes soon, or to another process
            for stale in list(itertools.islice(self._entries, excess)):
                self._pop(stale)

    def forget(self) -> None:
        """The consumer was made anew: its sequences may start over."""
        self._entries.clear()
        self._handed.clear()
        self._budgets.clear()
        self._waiting.clear()
