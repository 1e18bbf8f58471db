"""One member of a group on SQLite: fetch, settle, lag, release, through leases on delivery rows.

What a fetch takes is leased to the member (:mod:`millstream.brokers.sqlite.leases`);
settling deletes or reschedules the rows (:mod:`millstream.brokers.sqlite.schema`).
Both run on the connection's thread, one transaction per call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress

from millstream.brokers.base import Lag
from millstream.brokers.sqlite import leases, schema
from millstream.brokers.sqlite.connection import LiveConnection, SqliteConnection
from millstream.errors import BrokerUnavailable
from millstream.message import Message

__all__ = ["SqliteSubscription"]

log = logging.getLogger("millstream.brokers")

# Other processes cannot wake us, so an empty fetch polls, backing off from
# quick (a burst is about to arrive) to cheap (the topic is idle).
_POLL_FIRST = 0.002
_POLL_MAX = 0.05


class SqliteSubscription:
    """A group member on the SQLite broker, known to the file by a random owner id.

    While the member keeps calling ``fetch`` or ``settle``, the leases of
    everything it holds are pushed out every half lease (one UPDATE riding
    on that call's transaction), so a slow handler keeps its messages; a
    member that stops calling loses them when the lease runs out.
    ``fetch(0, 0)`` takes nothing and only keeps the leases alive.
    ``taken_over`` counts the messages it fetched that a stopped member held.
    """

    def __init__(
        self,
        live: LiveConnection,
        topic: str,
        group: str,
        gid: int,
        owner: int,
        name: str | None,
        *,
        forget: Callable[[SqliteSubscription], None],
    ) -> None:
        self.taken_over = 0
        self._live = live
        self._forget = forget  # the broker's: stop tracking this once closed
        self.topic = topic
        self.group = group
        self.name = name
        self._gid = gid
        self._owner = owner
        self._epoch = live.epoch  # its leases mean nothing to a later connection
        self._tokens = itertools.count(1)
        self._extended_at = time.time()
        self._closed = False

    @property
    def member(self) -> tuple[int, int]:
        """(group id, owner id): who holds a lease, as the file records it."""
        return self._gid, self._owner

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages`` in publish order, waiting up to ``timeout`` for the first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = _POLL_FIRST
        while True:
            connection = self._check()
            taken = await connection.run(
                self._take, max_messages, next(self._tokens), self._extension_due()
            )
            if taken.taken_over:
                self._took_over(taken.taken_over)
            remaining = deadline - loop.time()
            if taken.messages or remaining <= 0 or max_messages <= 0:
                return taken.messages  # fetch(0, _) only extends the leases
            await self._live.wait(self.topic, min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX)

    async def settle(
        self,
        acks: Sequence[Message],
        requeues: Sequence[tuple[Message, float]],
        deads: Sequence[tuple[Message, str]],
    ) -> None:
        """Apply a batch of outcomes in one transaction; receipts no longer held are skipped."""
        connection = self._check()
        ack_rows = [receipt for m in acks if (receipt := _receipt(m)) is not None]
        retry_rows = [(*r, delay) for m, delay in requeues if (r := _receipt(m)) is not None]
        dead_rows = [(*r, reason) for m, reason in deads if (r := _receipt(m)) is not None]
        extend = self._extension_due()
        if ack_rows or retry_rows or dead_rows or extend:
            await connection.run(self._settle, ack_rows, retry_rows, dead_rows, extend)
        if any(delay <= 0 for _, _, delay in retry_rows):
            self._live.wake(self.topic)

    async def lag(self) -> Lag:
        """Deliveries of the group not yet acked: waiting, leased or waiting to retry."""
        connection = self._check()
        return Lag(total=await connection.run(schema.count_live, self._gid))

    async def close(self) -> None:
        """Give back what this member holds, uncounted. Safe twice and after a cut."""
        if self._closed:
            return
        self._closed = True
        self._forget(self)
        with suppress(BrokerUnavailable):
            connection = self._live.current(self._epoch)
            if await connection.run(schema.release, [self.member], count_attempt=False):
                self._live.wake(self.topic)

    def lost(self) -> None:
        """The connection was cut under this member: it can do nothing more."""
        self._closed = True

    def _took_over(self, holders: Mapping[str, int]) -> None:
        """Count what one fetch took over; one warning for the fetch."""
        count = sum(holders.values())
        self.taken_over += count
        named = {name or "an unnamed member": n for name, n in holders.items()}
        held_by = ", ".join(named if len(named) == 1 else (f"{k} ({n})" for k, n in named.items()))
        log.warning(
            "sqlite: %s took over %d message(s) of %s/%s held by %s, which stopped "
            "without releasing them (its lease of %gs ran out, or its name subscribed again)",
            f"member {self.name}" if self.name else "an unnamed member",
            count, self.topic, self.group, held_by,
            self._live.lease,
        )  # fmt: skip

    def _check(self) -> SqliteConnection:
        if self._closed:
            raise BrokerUnavailable(
                f"broker {self._live.url}: subscription to {self.topic!r} is closed"
            )
        return self._live.current(self._epoch)

    def _extension_due(self) -> bool:
        """Whether to push out our leases now: every half lease while we keep calling."""
        now = time.time()
        if now - self._extended_at < self._live.lease / 2:
            return False
        self._extended_at = now
        return True

    # The two below run on the connection's thread and read only fixed attributes.

    def _take(self, conn: sqlite3.Connection, limit: int, token: int, extend: bool) -> leases.Taken:
        now = time.time()
        gid, owner = self.member
        until = now + self._live.lease
        return leases.take(conn, self.topic, gid, owner, token, limit, now, until, extend)

    def _settle(
        self,
        conn: sqlite3.Connection,
        acks: list[tuple[int, int]],
        requeues: list[tuple[int, int, float]],
        deads: list[tuple[int, int, str]],
        extend: bool,
    ) -> None:
        now = time.time()
        until = now + self._live.lease if extend else None
        gid, owner = self.member
        schema.settle(conn, self.topic, gid, owner, acks, requeues, deads, now, until)


def _receipt(message: Message) -> tuple[int, int] | None:
    """(seq, lease token) of a message this broker delivered; anything else is ignored."""
    receipt = message.receipt
    if isinstance(receipt, tuple) and len(receipt) == 2:
        seq, token = receipt
        if isinstance(seq, int) and isinstance(token, int):
            return seq, token
    return None
