"""What members of a group on NATS hold, kept where a successor finds it, and who took what over.

JetStream keeps no owner per delivery: what a member that crashed held
comes back only when the consumer's ``ack_wait`` runs out, to any member,
and nothing says whose it was. Two small things fill that gap, both in the
stream ``MSHELD`` (memory storage, one message per subject: each write
replaces the one before, kept a day at most):

**The record of a named member** (``subscribe(..., member="m")``), on
``_ms.held.<stream>.<consumer>.<member>``: when it was written, then the
acknowledgement subject of every delivery the member holds. The member
rewrites it without waiting for the stream (a publish, no reply) once per
pull request that delivered something, and after a settle with retries
(a retried message is no longer the member's; its stale subject would
redeliver it early). A member that subscribes under that name reads the
record, ``-NAK``s every subject in it (the last as a request, so all are
applied before its first pull), so the server redelivers at once what the
crashed one held (counted: a nak is a delivery), and empties it.
A subject already settled is a no-op to the server.

**Retry notes**, on ``_ms.retried.<stream>.<consumer>.<stream sequence>``:
the delivery count a member retried a message at. The server's delivery
count adds retries and expired leases alike; a redelivery whose previous
delivery was not retried (no note for it) was taken over from a member
whose ``ack_wait`` ran out. Notes cost one publish per retried message;
deliveries the server made for the first time (all but a few) cost nothing.

**Giving back.** A member that closes gives back what it holds uncounted
(:meth:`Members.give_back`) and empties its record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nats.js import errors as js_errors

from millstream.brokers.nats.acks import ACK, acknowledge
from millstream.brokers.nats.connection import Connection, api_error, translated
from millstream.brokers.nats.names import HELD_STREAM, Names
from millstream.brokers.nats.wire import delivery, private_headers
from millstream.errors import BrokerUnavailable
from millstream.message import Message

if TYPE_CHECKING:
    from millstream.brokers.nats.lost import LostDeliveries
    from millstream.brokers.nats.streams import JetStream

__all__ = ["Members"]

_LOOKUPS = 256  # notes looked up at once
_NAK = b"-NAK"

log = logging.getLogger("millstream.brokers")


@dataclass
class _TakenBack:
    """What a member took back from the record of its predecessor under the same name."""

    member: str
    written_at: float
    sequences: set[int] = field(default_factory=set)


class Members:
    """One subscription's record (when it has a name), its takeover accounting, its give-back."""

    def __init__(
        self, jetstream: JetStream, connection: Connection, names: Names, member: str | None
    ) -> None:
        self._jetstream = jetstream
        self._connection = connection
        self._client = connection.client
        self._names = names
        self.member = member
        self._record = f"_ms.held.{names.stream}.{names.consumer}.{member}" if member else ""
        self._notes = f"_ms.retried.{names.stream}.{names.consumer}."
        self._mine = (names.stream, "_INBOX")
        self._taken_back: _TakenBack | None = None
        self._enabled = False

    async def start(self) -> None:
        """Make sure ``MSHELD`` exists; take back what this member's predecessor held."""
        self._enabled = await self._jetstream.ensure_held_stream()
        if self._enabled and self._record:
            self._taken_back = await self._take_back()

    async def _take_back(self) -> _TakenBack | None:
        found = await self._last(self._record)
        if found is None:
            return None
        written, *subjects = found.decode(errors="replace").split("\n")
        subjects = [s for s in subjects if s]
        if not subjects:
            return None
        taken = _TakenBack(str(self.member), _float(written))
        for subject in subjects:
            with suppress(ValueError, IndexError):
                taken.sequences.add(delivery(subject)[1])
        # All applied before the first pull, which takes them back in one batch.
        await acknowledge(self._connection, [(s, _NAK) for s in subjects], *self._mine)
        # The record is spent: a later successor must not nak these again.
        await self.write(())
        return taken

    async def write(self, held: Iterable[str]) -> None:
        """Replace the record with ``held`` (acknowledgement subjects); does not wait for it."""
        if not (self._enabled and self._record):
            return
        body = "\n".join((f"{time.time():.3f}", *held)).encode()
        with translated(self._connection.url):
            await self._client.publish(self._record, body)

    async def note_retries(self, retried: Sequence[str]) -> None:
        """Leave a note for each retried delivery: its redelivery is a retry, not a takeover."""
        if not self._enabled:
            return
        with translated(self._connection.url):
            for reply in retried:
                delivered, sequence, _ = delivery(reply)
                await self._client.publish(f"{self._notes}{sequence}", b"%d" % delivered)

    async def taken_over(self, redelivered: list[Message], lost: LostDeliveries) -> int:
        """How many of ``redelivered`` (about to be handed out) were taken over, logged once.

        What this process lost with a connection is no takeover, nor an
        attempt: ``lost`` takes it off first. Raises ``BrokerUnavailable`` when
        the connection is lost meanwhile: the batch must not be handed out.
        """
        unseen = lost.correct(redelivered) if lost else [(m, 0) for m in redelivered]
        return await self._account(unseen, lost) if unseen else 0

    async def give_back(self, held: Sequence[Message]) -> None:
        """Give ``held`` back to the group uncounted, which a ``nak`` cannot (it counts a
        delivery): a copy of each with its deliveries so far goes to the group's private
        subject, then the original is acked. Then the record is emptied: nothing is left
        for a successor to take back."""
        if held:
            await self.copy_back([(m, m.attempt - 1) for m in held])
        await self.write(())

    async def copy_back(self, messages: Sequence[tuple[Message, int]]) -> None:
        """Put each message back to the group as a private copy with ``before`` deliveries
        counted (stored by the stream first), then ack the original."""
        names = self._names
        copies = ((m.payload, private_headers(m, before)) for m, before in messages)
        await self._jetstream.send(names.private, copies, names.stream)
        await acknowledge(self._connection, [(m.receipt, ACK) for m, _ in messages], *self._mine)

    async def _account(self, handed: Sequence[tuple[Message, int]], lost: LostDeliveries) -> int:
        """Count what ``handed`` took over (a redelivery not explained by a retry) and log it once.

        ``handed``: redeliveries, each with the last delivery of it a member
        in this process received (0: none). Only redeliveries are looked at,
        so a batch of first deliveries costs nothing; notes are looked up all
        at once. What ``lost`` takes for deliveries lost connections of this
        process swallowed is no takeover (and no attempt: ``lost`` takes them
        off). A note that cannot be read leaves its delivery uncounted; the
        connection lost meanwhile raises ``BrokerUnavailable``: how to count
        the batch is not known, so it is not handed out.
        """
        if not self._enabled:
            return 0
        from_record, looked_up = 0, []
        taken = self._taken_back
        for message, seen in handed:
            delivered, sequence, _ = delivery(message.receipt)
            if delivered <= 1:
                continue  # a group-private copy counting earlier deliveries
            if taken is not None and sequence in taken.sequences:
                taken.sequences.discard(sequence)
                from_record += 1
            else:
                looked_up.append((message, sequence, delivered, seen))
        expired = await self._expired(looked_up) if looked_up else []
        if expired and lost:
            now = time.monotonic()
            expired = [(m, n) for m, n in expired if lost.charge(m, n, now) < n]
        if from_record or expired:
            self._log(from_record, len(expired))
        return from_record + len(expired)

    async def _expired(
        self, redelivered: list[tuple[Message, int, int, int]]
    ) -> list[tuple[Message, int]]:
        """Those of (message, sequence, delivered, seen here) whose delivery before was no
        retry (a lease ran out), each with how many deliveries since its last retry (and
        since ``seen``) reached no member here."""
        expired: list[tuple[Message, int]] = []
        for start in range(0, len(redelivered), _LOOKUPS):
            chunk = redelivered[start : start + _LOOKUPS]
            notes = await asyncio.gather(
                *(self._last(f"{self._notes}{sequence}") for _, sequence, _, _ in chunk),
                return_exceptions=True,
            )
            for (message, _, delivered, seen), note in zip(chunk, notes, strict=True):
                if isinstance(note, BrokerUnavailable):
                    raise note
                if isinstance(note, BaseException):
                    continue  # unknown: not counted
                retried = int(note) if note is not None and note.isdigit() else 0
                if retried != delivered - 1:
                    retried = retried if retried < delivered else 0
                    expired.append((message, delivered - 1 - max(retried, seen)))
        return expired

    async def _last(self, subject: str) -> bytes | None:
        """The last message on ``subject`` in ``MSHELD``, ``None`` if there is none."""
        try:
            found = await self._connection.stored(HELD_STREAM, last_of=subject)
        except js_errors.APIError as exc:
            raise api_error(self._connection.url, exc, f"reading {subject!r}") from None
        return None if found is None else found[0]

    def _log(self, from_record: int, expired: int) -> None:
        names = self._names
        who = f"member {self.member}" if self.member else "a member (no name)"
        parts = []
        if from_record and self._taken_back is not None:
            ago = time.time() - self._taken_back.written_at
            parts.append(
                f"{from_record} held by {self._taken_back.member} (its predecessor under "
                f"this name), which stopped calling {ago:.0f}s ago"
            )
        if expired:
            lease = self._jetstream.options.lease
            parts.append(
                f"{expired} held by member(s) whose lease (ack_wait {lease:g}s) ran out, "
                "which stopped calling at least that long ago"
            )
        log.warning(
            "nats: %s took over %d message(s) of %s/%s: %s",
            who,
            from_record + expired,
            names.topic,
            names.group,
            "; ".join(parts),
        )


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0
