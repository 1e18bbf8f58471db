"""The store's contract: one transaction API for HTTP handlers and consumers.

A service's state lives in one SQL database that its HTTP routes and its
consumers share: SQLite for one machine, PostgreSQL for more. Both sides
write through ``async with store.transaction() as tx``; a consumer declared
``idempotent=True`` gets the transaction its message is recorded in.

SQL is written once for both databases, with numbered parameters
(``$1``, ``$2``, ...), which asyncpg takes as they are and the SQLite
backend passes to SQLite as ``?1``, ``?2``. Rows come back as dicts.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson

from millstream.errors import ConfigError, StoreError
from millstream.message import encode, new_message_id
from millstream.runtime.handler import Injected

if TYPE_CHECKING:
    from millstream.cache import Cache

__all__ = [
    "Dialect",
    "OutboxRow",
    "Row",
    "Store",
    "Transaction",
    "current_transaction",
]

log = logging.getLogger("millstream.store")

Dialect = Literal["sqlite", "postgres"]
Row = dict[str, Any]
AfterCommit = Callable[[], Awaitable[None] | None]

_current: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar(
    "millstream_transaction", default=None
)


def current_transaction() -> Transaction:
    """The transaction the running handler was given (``idempotent=True`` consumers)."""
    tx = _current.get()
    if tx is None:
        raise RuntimeError(
            "no store transaction is open here; declare the consumer with idempotent=True "
            "or a `tx: Transaction` parameter, or open one with `async with store.transaction()`"
        )
    return tx


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A message written by ``tx.publish``, waiting for the relay."""

    topic: str
    message_id: str
    key: str | None
    headers: dict[str, str]
    payload: bytes
    attempts: int = 0


@dataclass(slots=True)
class _Pending:
    outbox: list[OutboxRow] = field(default_factory=list)
    after_commit: list[AfterCommit] = field(default_factory=list)


class _Reads(ABC):
    """Queries: ``fetch`` by each side; the first row and the first value on top of it."""

    @abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Every row of a query, as dicts (on a store: outside any transaction)."""

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """The first row of a query, or ``None``."""
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row, or ``None``."""
        row = await self.fetchrow(sql, *args)
        return None if row is None else next(iter(row.values()))


class Transaction(_Reads, Injected):
    """One database transaction; commits when its ``async with`` block ends without error.

    Besides SQL, a transaction carries what must happen only if it commits:
    messages published through the outbox (``publish``), and callbacks such
    as cache invalidation (``after_commit``, ``invalidate``). Once its block
    has ended, every use raises ``StoreError``.
    """

    dialect: Dialect

    def __init__(self, store: Store) -> None:
        self.store = store
        self.closed = False
        self._pending = _Pending()

    @classmethod
    def current(cls) -> Transaction:
        """The transaction the running handler was given (how ``tx: Transaction`` is filled)."""
        return current_transaction()

    # -- SQL ---------------------------------------------------------------

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; returns the number of rows it changed."""
        self._check_open()
        return await self._execute(sql, args)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each parameter row, in one round trip where possible."""
        self._check_open()
        batch = [tuple(row) for row in rows]
        if batch:
            await self._executemany(sql, batch)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Every row of a query, as dicts; sees this transaction's own writes."""
        self._check_open()
        return await self._fetch(sql, args)

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError(
                "this transaction has ended; use it only inside its `async with` block"
            )

    # -- the backend ---------------------------------------------------------

    @abstractmethod
    async def _execute(self, sql: str, args: Sequence[Any]) -> int: ...

    @abstractmethod
    async def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None: ...

    @abstractmethod
    async def _fetch(self, sql: str, args: Sequence[Any]) -> list[Row]: ...

    @abstractmethod
    async def _begin(self) -> None: ...

    @abstractmethod
    async def _commit(self) -> None: ...

    @abstractmethod
    async def _rollback(self) -> None:
        """Roll back if a transaction is open on the connection (also after a cancelled BEGIN)."""

    # -- what happens only on commit ---------------------------------------

    def publish(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Publish ``value`` to ``topic`` if, and only if, this transaction commits.

        The message is written to the outbox table in this transaction and
        published by the relay after the commit; returns its id, which the
        consumers' idempotency ledger keys on, so a relay that publishes a
        row twice still has one effect.
        """
        self._check_open()
        message_id = new_message_id()
        self._pending.outbox.append(
            OutboxRow(topic, message_id, key, dict(headers or {}), encode(value))
        )
        return message_id

    def after_commit(self, callback: AfterCommit) -> None:
        """Call ``callback`` (sync or async) once this transaction has committed."""
        self._check_open()
        self._pending.after_commit.append(callback)

    def invalidate(self, cache: Cache[Any], *keys: str) -> None:
        """Drop ``keys`` from ``cache`` here and on every instance, once committed."""
        key_list = list(keys)
        self.after_commit(lambda: cache.invalidate(key_list))

    # -- used by the store ---------------------------------------------------

    async def claim_message(self, group: str, topic: str, message_id: str, now: float) -> bool:
        """Record ``message_id`` of ``topic`` as processed by ``group``; ``False`` if it was.

        On PostgreSQL a second member inserting the same id waits for the
        first's transaction: if that commits, this returns ``False``.
        """
        inserted = await self.execute(
            "INSERT INTO millstream_processed (grp, topic, message_id, processed_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            group,
            topic,
            message_id,
            now,
        )
        return inserted == 1

    async def _write_outbox(self, rows: Sequence[OutboxRow], now: float) -> None:
        await self.executemany(
            "INSERT INTO millstream_outbox "
            "(topic, message_id, msg_key, headers, payload, created_at, due_at, attempts) "
            "VALUES ($1, $2, $3, $4, $5, $6, $6, 0)",
            [
                (r.topic, r.message_id, r.key, orjson.dumps(r.headers).decode(), r.payload, now)
                for r in rows
            ],
        )


async def run_after_commit(callbacks: Sequence[AfterCommit]) -> None:
    """Run committed callbacks; one failing is logged and does not stop the rest."""
    for callback in callbacks:
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("an after-commit callback failed")


class Store(_Reads):
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
        tx = _current.get()
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
            token = _current.set(tx)
            try:
                try:
                    await tx._begin()
                    yield tx
                    pending = tx._pending
                    if pending.outbox:
                        await tx._write_outbox(pending.outbox, time.time())
                except BaseException:
                    await _to_the_end(tx._rollback(), log_failure=True)
                    raise
                try:
                    await _to_the_end(tx._commit())
                except asyncio.CancelledError as exc:
                    cancelled = exc  # the commit finished; let the cancellation through below
            finally:
                tx.closed = True
                _current.reset(token)
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
        async with self.transaction() as tx:
            if self._CLAIM_LOCK:
                await tx.execute(self._CLAIM_LOCK)
            rows = await tx.fetch(
                "UPDATE millstream_outbox SET claimed_until = $1, attempts = attempts + 1 "
                "WHERE id IN (SELECT o.id FROM millstream_outbox o WHERE o.sent_at IS NULL "
                "AND o.due_at <= $2 AND (o.claimed_until IS NULL OR o.claimed_until < $2) "
                "AND NOT EXISTS (SELECT 1 FROM millstream_outbox p WHERE p.sent_at IS NULL "
                "AND p.topic = o.topic AND p.msg_key = o.msg_key AND p.id < o.id "
                "AND (p.due_at > $2 OR p.claimed_until >= $2)) "
                f"ORDER BY o.id LIMIT $3{self._CLAIM_SKIP_LOCKED}) "
                "RETURNING id, topic, message_id, msg_key, headers, payload, attempts",
                now + lease,
                now,
                limit,
            )
        rows.sort(key=lambda row: int(row["id"]))
        return [
            (
                int(row["id"]),
                OutboxRow(
                    row["topic"],
                    row["message_id"],
                    row["msg_key"],
                    orjson.loads(row["headers"]),
                    bytes(row["payload"]),
                    int(row["attempts"]),
                ),
            )
            for row in rows
        ]

    async def outbox_sent(self, ids: Sequence[int], now: float) -> None:
        async with self.transaction() as tx:
            await tx.executemany(
                "UPDATE millstream_outbox SET sent_at = $1, claimed_until = NULL WHERE id = $2",
                [(now, row_id) for row_id in ids],
            )

    async def outbox_failed(self, failures: Sequence[tuple[int, float]], error: str) -> None:
        """Release rows for another try, each at its own due time."""
        async with self.transaction() as tx:
            await tx.executemany(
                "UPDATE millstream_outbox SET claimed_until = NULL, due_at = $1, last_error = $2 "
                "WHERE id = $3",
                [(due, error, row_id) for row_id, due in failures],
            )

    async def prune(self, sent_before: float, processed_before: float) -> None:
        """Delete sent outbox rows and ledger entries older than the cut-offs.

        One transaction per table: holding one table's locks while waiting
        for the other's could deadlock with a schema change that locks them
        in the other order.
        """
        await self.execute(
            "DELETE FROM millstream_outbox WHERE sent_at IS NOT NULL AND sent_at < $1",
            sent_before,
        )
        await self.execute(
            "DELETE FROM millstream_processed WHERE processed_at < $1", processed_before
        )

    async def outbox_pending(self) -> int:
        """Outbox rows not yet published."""
        value = await self.fetchval("SELECT COUNT(*) FROM millstream_outbox WHERE sent_at IS NULL")
        return int(value or 0)


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


MILLSTREAM_SCHEMA: dict[str, str] = {
    "sqlite": """
CREATE TABLE IF NOT EXISTS millstream_processed (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    processed_at REAL NOT NULL,
    PRIMARY KEY (grp, topic, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS millstream_processed_at ON millstream_processed (processed_at);
CREATE TABLE IF NOT EXISTS millstream_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    msg_key TEXT,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    due_at REAL NOT NULL,
    claimed_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS millstream_outbox_due ON millstream_outbox (due_at)
    WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS millstream_outbox_sent ON millstream_outbox (sent_at)
    WHERE sent_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS millstream_outbox_key ON millstream_outbox (topic, msg_key, id)
    WHERE sent_at IS NULL;
""",
    "postgres": """
CREATE TABLE IF NOT EXISTS millstream_processed (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    processed_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (grp, topic, message_id)
);
CREATE INDEX IF NOT EXISTS millstream_processed_at ON millstream_processed (processed_at);
CREATE TABLE IF NOT EXISTS millstream_outbox (
    id BIGSERIAL PRIMARY KEY,
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    msg_key TEXT,
    headers TEXT NOT NULL,
    payload BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    due_at DOUBLE PRECISION NOT NULL,
    claimed_until DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS millstream_outbox_due ON millstream_outbox (due_at)
    WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS millstream_outbox_sent ON millstream_outbox (sent_at)
    WHERE sent_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS millstream_outbox_key ON millstream_outbox (topic, msg_key, id)
    WHERE sent_at IS NULL;
""",
}
