"""``Transaction``: one unit of work on the store, the same for HTTP handlers and consumers.

SQL is written once for both databases, with numbered parameters
(``$1``, ``$2``, ...), which asyncpg takes as they are and the SQLite
backend passes to SQLite as ``?1``, ``?2``. Rows come back as dicts.
Besides SQL, a transaction carries what happens only once it commits:
messages for the outbox and callbacks such as cache invalidation.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from millstream.errors import StoreError
from millstream.message import deliver_at, encode, new_message_id
from millstream.runtime.handler import Injected
from millstream.store import ledger
from millstream.store.outbox_table import OutboxRow

if TYPE_CHECKING:
    from millstream.cache import Cache
    from millstream.store.base import Store

__all__ = [
    "CURRENT_TRANSACTION",
    "AfterCommit",
    "Dialect",
    "Reads",
    "Row",
    "Transaction",
    "current_transaction",
    "run_after_commit",
]

log = logging.getLogger("millstream.store")

Dialect = Literal["sqlite", "postgres"]
Row = dict[str, Any]
AfterCommit = Callable[[], Awaitable[None] | None]

CURRENT_TRANSACTION: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar(
    "millstream_transaction", default=None
)
"""The transaction open in this task: the one the running handler was given, if any."""


def current_transaction() -> Transaction:
    """The transaction the running handler was given (``idempotent=True`` consumers)."""
    tx = CURRENT_TRANSACTION.get()
    if tx is None:
        raise RuntimeError(
            "no store transaction is open here; declare the consumer with idempotent=True "
            "or a `tx: Transaction` parameter, or open one with `async with store.transaction()`"
        )
    return tx


@dataclass(slots=True)
class _Pending:
    """What a transaction does only once it has committed."""

    outbox: list[OutboxRow] = field(default_factory=list)
    after_commit: list[AfterCommit] = field(default_factory=list)


class Reads(ABC):
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


class Transaction(Reads, Injected):
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
        delay: float | None = None,
    ) -> str:
        """Publish ``value`` to ``topic`` if, and only if, this transaction commits.

        The message is written to the outbox table in this transaction and
        published by the relay after the commit; returns its id, which the
        consumers' idempotency ledger keys on, so a relay that publishes a
        row twice still has one effect. With ``delay`` (seconds, counted from
        this call) no consumer gets it before that time: the relay publishes
        it at once, with the broker's own delay.
        """
        self._check_open()
        message_id = new_message_id()
        due = deliver_at(delay)
        self._pending.outbox.append(
            OutboxRow(topic, message_id, key, dict(headers or {}), encode(value), deliver_at=due)
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
        return await ledger.claim(self, group, topic, message_id, now)


async def run_after_commit(callbacks: Sequence[AfterCommit]) -> None:
    """Run committed callbacks; one failing is logged and does not stop the rest."""
    for callback in callbacks:
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("an after-commit callback failed")
