"""The PostgreSQL store, for services on more than one machine (asyncpg).

A pool of connections; each transaction holds one for its duration. The
outbox relay claims rows with ``FOR UPDATE SKIP LOCKED``, so the relays of
several instances share the outbox without waiting on each other.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg

from millstream.errors import ConfigError, StoreError
from millstream.store.base import (
    MILLSTREAM_SCHEMA,
    Row,
    Store,
    Transaction,
    bind_transaction,
    commit_pending,
    run_after_commit,
    unbind_transaction,
)

__all__ = ["PostgresStore"]

EXPECTED = "postgresql://user:password@host:5432/database?pool_size=10"


class _PostgresTransaction(Transaction):
    dialect = "postgres"

    def __init__(self, conn: asyncpg.Connection) -> None:
        super().__init__()
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._conn.execute(sql, *args)
        # "INSERT 0 1", "UPDATE 3", "DELETE 0": the count is the last word.
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = list(rows)
        if batch:
            await self._conn.executemany(sql, batch)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(record) for record in await self._conn.fetch(sql, *args)]


class PostgresStore(Store):
    """A store in a PostgreSQL database (``postgresql://...``)."""

    dialect = "postgres"
    _CLAIM_SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        unknown = sorted(set(query) - {"pool_size"})
        if unknown:
            raise ConfigError(
                f"setting store_url: unknown parameter(s) {', '.join(unknown)}; expected {EXPECTED}"
            )
        raw = query.get("pool_size", ["10"])[-1]
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(
                f"setting store_url: pool_size={raw!r} must be a whole number of at least 1; "
                f"expected {EXPECTED}"
            )
        self._pool_size = int(raw)
        self._dsn = urlunsplit(parts._replace(scheme="postgresql", query=""))
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._pool_size, command_timeout=60
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"store {_redact(self.url)}: cannot connect ({exc})") from exc
        # Two instances starting at once must not race creating the tables.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(727271)")
            for script in (MILLSTREAM_SCHEMA["postgres"], *self._scripts()):
                await conn.execute(script)
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _ready(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"store {_redact(self.url)}: not open (the app opens it at start)")
        return self._pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._ready().acquire() as conn:
            tx = _PostgresTransaction(conn)
            token = bind_transaction(tx)
            try:
                async with conn.transaction():
                    yield tx
                    pending = await commit_pending(tx, time.time())
            finally:
                unbind_transaction(token)
        if pending.outbox:
            self._outbox_written()
        await run_after_commit(pending.after_commit)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._ready().acquire() as conn:
            return [dict(record) for record in await conn.fetch(sql, *args)]


def _redact(url: str) -> str:
    from millstream.brokers import redact

    return redact(url)
