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
import secrets
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from millstream.brokers.base import Capabilities, Layout
from millstream.brokers.sqlite import leases, schema
from millstream.brokers.sqlite.connection import (
    DEFAULT_LEASE,
    LiveConnection,
    SqliteConnection,
    parse_url,
)
from millstream.brokers.sqlite.dead_letters import SqliteDeadLetters
from millstream.brokers.sqlite.layout import layout
from millstream.brokers.sqlite.subscription import SqliteSubscription
from millstream.message import OutgoingMessage

__all__ = ["SqliteBroker", "SqliteDeadLetters", "SqliteSubscription"]


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
        self._connection: SqliteConnection | None = None  # kept across cuts, not closes
        self._live = LiveConnection(self.url, lease)
        self._lock = asyncio.Lock()
        self._subscriptions: list[SqliteSubscription] = []
        # Members whose connection was cut; their leases go back when we reconnect.
        self._lost: list[tuple[int, int]] = []

    @classmethod
    def from_url(cls, url: str) -> SqliteBroker:
        """The broker for ``url``; raises ``ConfigError`` naming what is wrong with it."""
        path, lease, synchronous = parse_url(url)
        return cls(path, lease=lease, synchronous=synchronous, url=url)

    async def connect(self) -> None:
        """Open the file (creating it and its directory); a no-op when connected."""
        async with self._lock:
            if self._live.is_live:
                return
            if self._connection is None:
                self._connection = SqliteConnection(
                    self.url, self.path, self.synchronous, on_lost=self._lose_connection
                )
            await self._connection.open()
            if self._lost:
                await self._connection.run(schema.release, self._lost, count_attempt=True)
                self._lost.clear()
            self._live.begin(self._connection)

    async def ping(self) -> None:
        """Open the file if need be, then read from it on the broker's thread."""
        await self.connect()
        await self.current().run(_read_one)

    async def close(self) -> None:
        """Close every subscription (releasing what it holds), then the connection."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        self._live.end()
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
        if not self._live.is_live or self._connection is None:
            return
        self._live.end()
        for subscription in self._subscriptions:
            subscription.lost()
            self._lost.append(subscription.member)
        self._subscriptions.clear()
        self._connection.drop()

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Store ``messages`` in one transaction; returns once committed."""
        connection = self._live.current()
        if messages:
            await connection.run(schema.publish, topic, list(messages))
            self._live.wake(topic)

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> SqliteSubscription:
        """Join ``group`` on ``topic``, creating the group if it is new.

        Under a ``member`` name, what a crashed member of that name still
        holds is fetchable again at once (the attempt counted), instead of
        when its lease runs out.
        """
        connection = self._live.current()
        owner = secrets.randbits(62) + 1
        gid = await connection.run(leases.join, topic, group, owner, member)
        subscription = SqliteSubscription(
            self._live, topic, group, gid, owner, member, forget=self._forget
        )
        self._subscriptions.append(subscription)
        return subscription

    async def dead_letters(self, topic: str, group: str) -> SqliteDeadLetters:
        """The dead-letter queue of ``topic`` and ``group``."""
        self._live.current()
        return SqliteDeadLetters(self._live, topic, group)

    def layout(self, topic: str, group: str) -> Layout:
        """Where ``group``'s retries and dead letters of ``topic`` are kept, by name."""
        return layout(topic, group)

    def current(self, epoch: int | None = None) -> SqliteConnection:
        """The live connection (of ``epoch``, if given), else ``BrokerUnavailable``."""
        return self._live.current(epoch)

    def _forget(self, subscription: SqliteSubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)


def _read_one(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()
