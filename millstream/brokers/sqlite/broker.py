"""The embedded SQLite broker: the durable default, shared by processes on one machine.

One file holds every topic (see :mod:`millstream.brokers.sqlite.schema` for
the tables). Each group gets a delivery row per message; fetching leases rows
to a member, settling deletes or reschedules them, and a message is deleted
once every group of its topic is done with it. Several processes may open
the same file: WAL lets readers run beside the one writer, and every write is
an ``IMMEDIATE`` transaction, so two members never lease the same row.

All SQLite work of one :class:`SqliteBroker` runs on the one thread that
owns its connection (:mod:`millstream.brokers.sqlite.connection`); each
operation is one hop to that thread and at most one transaction, so the
event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

from millstream.brokers.base import Capabilities, DeadLetter, Lag
from millstream.brokers.sqlite import dead_letters, leases, schema
from millstream.brokers.sqlite.connection import DEFAULT_LEASE, SqliteConnection, parse_url
from millstream.errors import BrokerUnavailable
from millstream.message import Message, OutgoingMessage

__all__ = ["SqliteBroker", "SqliteDeadLetters", "SqliteSubscription"]

log = logging.getLogger("millstream.brokers")

# Other processes cannot wake us, so an empty fetch polls, backing off from
# quick (a burst is about to arrive) to cheap (the topic is idle).
_POLL_FIRST = 0.002
_POLL_MAX = 0.05


class SqliteBroker:
    """One connection to a broker file.

    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, with
    ``lease=SECONDS`` (default 30: how long a fetched message stays with a
    member that has stopped calling) and ``synchronous=NORMAL|FULL``
    (default NORMAL: a commit survives a crash of the process, FULL also a
    power cut, at the price of an fsync per transaction).

    Key order across the members of a group (``key_order``) is by the
    *publish* key, ``OutgoingMessage.key``: a member is not given a message
    while another member holds one with its key. The broker never sees a
    consumer's own ``key=`` (a payload field or a function), so a consumer
    that orders by one of those gets per-key order within each member only;
    publish with ``key=`` (or ``publish_batch(..., key_by=...)``) to have it
    across members and processes. As on every broker, the order holds among
    first deliveries: a retry waiting out its delay blocks nothing, so later
    messages of its key may overtake it.
    """

    capabilities = Capabilities(native_delay=True, durable=True, key_order=True)

    def __init__(
        self,
        path: str | Path,
        *,
        lease: float = DEFAULT_LEASE,
        synchronous: str = "NORMAL",
        url: str | None = None,
    ) -> None:
        self.path = Path(path).absolute()
        self.url = url if url is not None else f"sqlite:///{path}"
        self.lease = lease
        self.synchronous = synchronous
        self._connection: SqliteConnection | None = None
        self._connected = False
        self._epoch = 0
        self._lock = asyncio.Lock()
        self._subscriptions: list[SqliteSubscription] = []
        # Members whose connection was cut; their leases go back when we reconnect.
        self._lost: list[tuple[int, int]] = []
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    @classmethod
    def from_url(cls, url: str) -> SqliteBroker:
        """The broker for ``url``; raises ``ConfigError`` naming what is wrong with it."""
        path, lease, synchronous = parse_url(url)
        return cls(path, lease=lease, synchronous=synchronous, url=url)

    async def connect(self) -> None:
        """Open the file (creating it and its directory); a no-op when connected."""
        async with self._lock:
            if self._connected:
                return
            if self._connection is None:
                self._connection = SqliteConnection(
                    self.url, self.path, self.synchronous, on_lost=self._lose_connection
                )
            await self._connection.open()
            if self._lost:
                await self._connection.run(schema.release, self._lost, count_attempt=True)
                self._lost.clear()
            self._epoch += 1
            self._connected = True

    async def close(self) -> None:
        """Close every subscription (releasing what it holds), then the connection."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        self._connected = False
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    def cut(self) -> None:
        """Test hook: drop the connection as a network failure would.

        Nothing is released now; every operation raises ``BrokerUnavailable``
        until ``connect()``, which gives back what the cut members held with
        the attempt counted (another process only gets them when the lease
        runs out, exactly as after a crash). A real failure of the connection
        (I/O error, read-only or full disk) does the same.
        """
        self._lose_connection()

    def _lose_connection(self) -> None:
        if not self._connected or self._connection is None:
            return
        self._connected = False
        for subscription in self._subscriptions:
            subscription.lost()
            self._lost.append(subscription.member)
        self._subscriptions.clear()
        self._connection.drop()

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Store ``messages`` in one transaction; returns once committed."""
        connection = self.current()
        if messages:
            await connection.run(schema.publish, topic, list(messages))
            self.wake(topic)

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> SqliteSubscription:
        """Join ``group`` on ``topic``, creating the group if it is new.

        Under a ``member`` name, what a crashed member of that name still
        holds is fetchable again at once (the attempt counted), instead of
        when its lease runs out.
        """
        connection = self.current()
        owner = secrets.randbits(62) + 1
        gid = await connection.run(leases.join, topic, group, owner, member)
        subscription = SqliteSubscription(self, topic, group, gid, self._epoch, owner, member)
        self._subscriptions.append(subscription)
        return subscription

    async def dead_letters(self, topic: str, group: str) -> SqliteDeadLetters:
        """The dead-letter queue of ``topic`` and ``group``."""
        self.current()
        return SqliteDeadLetters(self, topic, group)

    def current(self, epoch: int | None = None) -> SqliteConnection:
        """The live connection (of ``epoch``, if given), else ``BrokerUnavailable``."""
        connection = self._connection
        if (
            not self._connected
            or connection is None
            or (epoch is not None and epoch != self._epoch)
        ):
            raise BrokerUnavailable(f"broker {self.url}: not connected")
        return connection

    def forget(self, subscription: SqliteSubscription) -> None:
        """Stop tracking a closed subscription."""
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def wake(self, topic: str) -> None:
        """Wake this broker's fetches waiting on ``topic``: something may be there now."""
        for waiter in self._waiters.pop(topic, ()):
            _resolve(waiter)

    async def wait(self, topic: str, seconds: float) -> None:
        """Sleep up to ``seconds``, less if this broker publishes to ``topic``."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        waiters = self._waiters.setdefault(topic, set())
        waiters.add(waiter)
        timer = loop.call_later(seconds, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            waiters.discard(waiter)


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
        broker: SqliteBroker,
        topic: str,
        group: str,
        gid: int,
        epoch: int,
        owner: int,
        name: str | None,
    ) -> None:
        self.taken_over = 0
        self._broker = broker
        self.topic = topic
        self.group = group
        self.name = name
        self._gid = gid
        self._owner = owner
        self._epoch = epoch
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
            if taken.messages or remaining <= 0:
                return taken.messages
            await self._broker.wait(self.topic, min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX)

    async def settle(
        self,
        acks: Sequence[Message],
        retries: Sequence[tuple[Message, float]],
        deads: Sequence[tuple[Message, str]],
    ) -> None:
        """Apply a batch of outcomes in one transaction; receipts no longer held are skipped."""
        connection = self._check()
        ack_rows = [receipt for m in acks if (receipt := _receipt(m)) is not None]
        retry_rows = [(*r, delay) for m, delay in retries if (r := _receipt(m)) is not None]
        dead_rows = [(*r, reason) for m, reason in deads if (r := _receipt(m)) is not None]
        extend = self._extension_due()
        if ack_rows or retry_rows or dead_rows or extend:
            await connection.run(self._settle, ack_rows, retry_rows, dead_rows, extend)
        if any(delay <= 0 for _, _, delay in retry_rows):
            self._broker.wake(self.topic)

    async def lag(self) -> Lag:
        """Deliveries of the group not yet acked: waiting, leased or waiting to retry."""
        connection = self._check()
        return Lag(total=await connection.run(schema.count_live, self._gid))

    async def close(self) -> None:
        """Give back what this member holds, uncounted. Safe twice and after a cut."""
        if self._closed:
            return
        self._closed = True
        self._broker.forget(self)
        with suppress(BrokerUnavailable):
            connection = self._broker.current(self._epoch)
            if await connection.run(schema.release, [self.member], count_attempt=False):
                self._broker.wake(self.topic)

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
            self._broker.lease,
        )  # fmt: skip

    def _check(self) -> SqliteConnection:
        if self._closed:
            raise BrokerUnavailable(
                f"broker {self._broker.url}: subscription to {self.topic!r} is closed"
            )
        return self._broker.current(self._epoch)

    def _extension_due(self) -> bool:
        """Whether to push out our leases now: every half lease while we keep calling."""
        now = time.time()
        if now - self._extended_at < self._broker.lease / 2:
            return False
        self._extended_at = now
        return True

    # The two below run on the connection's thread and read only fixed attributes.

    def _take(self, conn: sqlite3.Connection, limit: int, token: int, extend: bool) -> leases.Taken:
        now = time.time()
        gid, owner = self.member
        until = now + self._broker.lease
        return leases.take(conn, self.topic, gid, owner, token, limit, now, until, extend)

    def _settle(
        self,
        conn: sqlite3.Connection,
        acks: list[tuple[int, int]],
        retries: list[tuple[int, int, float]],
        deads: list[tuple[int, int, str]],
        extend: bool,
    ) -> None:
        now = time.time()
        until = now + self._broker.lease if extend else None
        gid, owner = self.member
        schema.settle(conn, self.topic, gid, owner, acks, retries, deads, now, until)


class SqliteDeadLetters:
    """The dead-letter queue of one topic and group in the broker file.

    Looking at a group that does not exist does not create it (a group that
    no one consumes would keep every message of the topic forever).
    """

    def __init__(self, broker: SqliteBroker, topic: str, group: str) -> None:
        self._broker = broker
        self._topic = topic
        self._group = group

    async def list(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Newest first."""
        connection = self._broker.current()
        return await connection.run(dead_letters.list_dead, self._topic, self._group, limit, offset)

    async def count(self) -> int:
        """How many letters the queue holds."""
        return await self._broker.current().run(dead_letters.count_dead, self._topic, self._group)

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        """Back into the group as fresh deliveries (attempt 1); returns how many."""
        connection = self._broker.current()
        replayed = await connection.run(dead_letters.replay_dead, self._topic, self._group, ids)
        if replayed:
            self._broker.wake(self._topic)
        return replayed

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        """Delete letters for good; returns how many."""
        connection = self._broker.current()
        return await connection.run(dead_letters.purge_dead, self._topic, self._group, ids)


def _receipt(message: Message) -> tuple[int, int] | None:
    """(seq, lease token) of a message this broker delivered; anything else is ignored."""
    receipt = message.receipt
    if isinstance(receipt, tuple) and len(receipt) == 2:
        seq, token = receipt
        if isinstance(seq, int) and isinstance(token, int):
            return seq, token
    return None


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
