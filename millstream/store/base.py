"""``Store``: the SQL database a service's HTTP handlers and consumers share.

A service's state lives in one SQL database that its HTTP routes and its
consumers share: SQLite for one machine, PostgreSQL for more. Both sides
write through ``async with store.transaction() as tx`` (``transaction.py``);
a consumer declared ``idempotent=True`` gets the transaction its message is
recorded in (``ledger.py``). The store also keeps the outbox
(``outbox_table.py``), and creates millstream's tables (``schema.py``)
before the service's own when it opens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from millstream.errors import ConfigError, StoreError
from millstream.store import ledger, outbox_table
from millstream.store.outbox_table import OutboxRow
from millstream.store.schema import MILLSTREAM_SCHEMA
from millstream.store.transaction import (
    CURRENT_TRANSACTION,
    Dialect,
    Reads,
    Row,
    Transaction,
    run_after_commit,
)

__all__ = ["Store"]

log = logging.getLogger("millstream.store")


class Store(Reads):
    """A SQL database shared by a service's HTTP handlers and consumers.

    ``schema`` registers DDL run when the store opens (write it with
    ``IF NOT EXISTS``); ``transaction`` is the one way to write. Reads that
    need no transaction can use ``fetch``/``fetchrow``/``fetchval``
    directly (inside a transaction of this store they go through it, and
    see its writes). The store keeps millstream's own tables too: the
    processed-message ledger and the outbox. It opens at the app's start,
    or on first use.
    """

    dialect: Dialect

    def __init__(self, url: str) -> None:
        self.url = url
        self._schema: list[str | Mapping[str, str]] = []
        self._outbox_listeners: list[Callable[[], None]] = []
        self._opening = asyncio.Lock()

    def schema(self, ddl: str | Mapping[str, str]) -> None:
        """Register DDL to run at open.

        One script for both databases, or ``{"sqlite": ..., "postgres": ...}``.
        """
        if isinstance(ddl, Mapping):
            unknown = sorted(set(ddl) - {"sqlite", "postgres"})
            if unknown:
                raise ConfigError(
                    f"store schema has scripts for unknown dialects {unknown}; "
                    "use the keys 'sqlite' and 'postgres'"
                )
        self._schema.append(ddl)

    def adopt_schema(self, other: Store) -> None:
        """Register the DDL registered on ``other`` too (the same service on another database)."""
        self._schema.extend(other._schema)

    def _scripts(self) -> list[str]:
        scripts = [MILLSTREAM_SCHEMA[self.dialect]]
        for ddl in self._schema:
            script = ddl if isinstance(ddl, str) else ddl.get(self.dialect)
            if script:
                scripts.append(script)
        return scripts

    def on_outbox_write(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after each commit that wrote outbox rows; returns the unsubscribe."""
        self._outbox_listeners.append(listener)
        return lambda: self._outbox_listeners.remove(listener)

    # -- opening -------------------------------------------------------------

    @property
    @abstractmethod
    def is_open(self) -> bool: ...

    async def open(self) -> None:
        """Connect and create the schema (millstream's tables, then the registered DDL)."""
        async with self._opening:
            if not self.is_open:
                await self._open()

    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    # -- transactions ----------------------------------------------------------

    @abstractmethod
    def _connection(self) -> AbstractAsyncContextManager[Transaction]:
        """A transaction object on a connection held for its duration (not yet begun)."""

    def _inside(self) -> Transaction | None:
        tx = CURRENT_TRANSACTION.get()
        return tx if tx is not None and tx.store is self and not tx.closed else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``async with store.transaction() as tx``: commit on success, roll back on error.

        A cancellation (a timeout) during the commit waits for the commit to
        finish, runs the after-commit callbacks, then goes on: the caller
        never hears "failed" about a transaction that committed.
        """
        if self._inside() is not None:
            raise StoreError(
                f"store {self.url}: a transaction of this store is already open here; "
                "transactions do not nest: use the `tx` you have"
            )
        await self.open()
        cancelled: asyncio.CancelledError | None = None
        async with self._connection() as tx:
            token = CURRENT_TRANSACTION.set(tx)
            try:
                try:
                    await tx._begin()
                    yield tx
                    pending = tx._pending
                    if pending.outbox:
                        await outbox_table.write(tx, pending.outbox, time.time())
                except BaseException:
                    await _to_the_end(tx._rollback(), log_failure=True)
                    raise
                try:
                    await _to_the_end(tx._commit())
                except asyncio.CancelledError as exc:
                    cancelled = exc  # the commit finished; let the cancellation through below
            finally:
                tx.closed = True
                CURRENT_TRANSACTION.reset(token)
        if pending.outbox:
            for listener in list(self._outbox_listeners):
                listener()
        await run_after_commit(pending.after_commit)
        if cancelled is not None:
            raise cancelled

    # -- reads and single statements -----------------------------------------

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Every row of a read-only query (through the open transaction, if any)."""
        inside = self._inside()
        if inside is not None:
            return await inside.fetch(sql, *args)
        await self.open()
        return await self._read(sql, args)

    @abstractmethod
    async def _read(self, sql: str, args: Sequence[Any]) -> list[Row]: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """One statement in a transaction of its own (or in the open one, if any)."""
        inside = self._inside()
        if inside is not None:
            return await inside.execute(sql, *args)
        async with self.transaction() as tx:
            return await tx.execute(sql, *args)

    # -- outbox and ledger, used by the relay ------------------------------

    _CLAIM_LOCK = ""
    """Run first in a claim, where the database needs it to serialise claims."""
    _CLAIM_SKIP_LOCKED = ""
    """Added to the claim's inner SELECT where the database can skip rows other relays lock."""

    async def claim_outbox(
        self, limit: int, now: float, lease: float
    ) -> list[tuple[int, OutboxRow]]:
        """Up to ``limit`` due, unsent outbox rows, oldest first, held from other relays.

        A claim is a lease: if this relay dies before marking the rows sent
        or failed, another takes them once ``lease`` seconds have passed. A
        keyed row waits while an older row with its topic and key is unsent
        and not in this claim (waiting out a retry, or claimed by another
        relay), so one key's messages go out in the order they were written.
        Claims are serialised (SQLite's write lock, an advisory lock on
        PostgreSQL), so two relays never split one key between them.
        """
        return await outbox_table.claim(
            self, limit, now, lease, lock=self._CLAIM_LOCK, skip_locked=self._CLAIM_SKIP_LOCKED
        )

    async def outbox_sent(self, ids: Sequence[int], now: float) -> None:
        """Mark outbox rows published."""
        await outbox_table.mark_sent(self, ids, now)

    async def outbox_failed(self, failures: Sequence[tuple[int, float]], error: str) -> None:
        """Release rows for another try, each at its own due time."""
        await outbox_table.release(self, failures, error)

    async def prune(self, sent_before: float, processed_before: float) -> None:
        """Delete sent outbox rows and ledger entries older than the cut-offs.

        One transaction per table: holding one table's locks while waiting
        for the other's could deadlock with a schema change that locks them
        in the other order.
        """
        await outbox_table.prune_sent(self, sent_before)
        await ledger.prune(self, processed_before)

    async def outbox_pending(self) -> int:
        """Outbox rows not yet published."""
        return await outbox_table.pending(self)


async def _to_the_end(work: Awaitable[None], *, log_failure: bool = False) -> None:
    """Await ``work`` to its end even if the caller is cancelled meanwhile (then re-raise).

    A commit or a rollback abandoned half way would leave the caller
    guessing, and a connection in the middle of a transaction.
    """
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is None:
            raise
        if log_failure:
            log.error("store: rolling back failed too: %r", task.exception())
            raise
        task.result()  # the commit failed: that, not the cancellation, is the answer
    except Exception:
        if not log_failure:
            raise
        log.exception("store: rolling back failed")
