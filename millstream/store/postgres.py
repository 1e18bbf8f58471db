"""The PostgreSQL store, for services on more than one machine (asyncpg).

A pool of connections; each transaction holds one for its duration. The
outbox relay claims rows with ``FOR UPDATE SKIP LOCKED``, so the relays of
several instances share the outbox without waiting on each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from millstream.errors import ConfigError, StoreError
from millstream.store.base import Store
from millstream.store.transaction import Row, Transaction

__all__ = ["PostgresStore"]

log = logging.getLogger("millstream.store")

_DDL_ATTEMPTS = 5
_SCHEMA_TABLE = """CREATE TABLE IF NOT EXISTS millstream_schema (
    digest TEXT PRIMARY KEY,
    applied_at DOUBLE PRECISION NOT NULL
)"""

EXPECTED = "postgresql://user:password@host:5432/database?pool_size=10&sslmode=require"


class _PostgresTransaction(Transaction):
    dialect = "postgres"

    def __init__(self, store: Store, conn: asyncpg.Connection) -> None:
        super().__init__(store)
        self._conn = conn

    # A lost connection becomes a StoreError naming the store; what the
    # database says about the SQL itself (a constraint, a syntax error) is
    # left as asyncpg raised it, for the caller to catch.

    async def _execute(self, sql: str, args: Sequence[Any]) -> int:
        try:
            status: str = await self._conn.execute(sql, *args)
        except _LOST as exc:
            raise _lost(self.store, exc, "") from exc
        # "INSERT 0 1", "UPDATE 3", "DELETE 0": the count is the last word.
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        try:
            await self._conn.executemany(sql, rows)
        except _LOST as exc:
            raise _lost(self.store, exc, "") from exc

    async def _fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        try:
            return [dict(record) for record in await self._conn.fetch(sql, *args)]
        except _LOST as exc:
            raise _lost(self.store, exc, "") from exc

    async def _begin(self) -> None:
        try:
            await self._conn.execute("BEGIN")
        except _LOST as exc:
            raise _lost(self.store, exc, "") from exc

    async def _commit(self) -> None:
        try:
            await self._conn.execute("COMMIT")
        except _LOST as exc:
            raise _lost(self.store, exc, _UNKNOWN) from exc

    async def _rollback(self) -> None:
        if not self._conn.is_closed() and self._conn.is_in_transaction():
            await self._conn.execute("ROLLBACK")


class PostgresStore(Store):
    """A store in a PostgreSQL database (``postgresql://...``).

    Parameters other than ``pool_size`` (``sslmode``, ...) go to asyncpg as
    they are. The schema runs once per database for each set of scripts
    (recorded in ``millstream_schema``): a table dropped by hand comes back
    only with a change to the scripts, or once its record is deleted.
    """

    dialect = "postgres"
    _CLAIM_LOCK = "SELECT pg_advisory_xact_lock(727272)"
    _CLAIM_SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        sizes = [value for name, value in query if name == "pool_size"]
        raw = sizes[-1] if sizes else "10"
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(
                f"setting store_url: pool_size={raw!r} must be a whole number of at least 1; "
                f"expected {EXPECTED}"
            )
        self._pool_size = int(raw)
        rest = urlencode([(name, value) for name, value in query if name != "pool_size"])
        self._dsn = urlunsplit(parts._replace(scheme="postgresql", query=rest))
        self._pool: asyncpg.Pool | None = None

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def _open(self) -> None:
        try:
            pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._pool_size, command_timeout=60
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"store {_redact(self.url)}: cannot connect ({exc})") from exc
        try:
            async with pool.acquire() as conn:
                await self._create_schema(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _create_schema(self, conn: asyncpg.Connection) -> None:
        """Run the DDL unless this very schema was already applied to the database.

        DDL locks the tables it names (``CREATE INDEX IF NOT EXISTS`` takes a
        share lock even when the index exists), so a fleet started at once
        would otherwise deadlock against its own relays' pruning and
        handlers. Each set of scripts is recorded by digest: once applied, a
        start only reads that record. When the DDL does run it runs under an
        advisory lock (two instances never race to create a table), and a
        deadlock against the service's own transactions rolls all of it back,
        so it is retried.
        """
        scripts = self._scripts()
        digest = hashlib.sha256("\0".join(scripts).encode()).hexdigest()
        if await _applied(conn, digest):
            return
        for attempt in range(1, _DDL_ATTEMPTS + 1):
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(727271)")
                    if await _applied(conn, digest):
                        return  # another instance applied it while we waited
                    for script in scripts:
                        await conn.execute(script)
                    await conn.execute(_SCHEMA_TABLE)
                    await conn.execute(
                        "INSERT INTO millstream_schema (digest, applied_at) VALUES ($1, $2) "
                        "ON CONFLICT DO NOTHING",
                        digest,
                        time.time(),
                    )
                return
            except asyncpg.DeadlockDetectedError as exc:
                if attempt == _DDL_ATTEMPTS:
                    raise StoreError(
                        f"store {_redact(self.url)}: creating the schema deadlocked "
                        f"{attempt} times against other transactions ({exc}); start again, "
                        "or apply the schema while the service is stopped"
                    ) from exc
                log.warning(
                    "store %s: creating the schema deadlocked against another transaction "
                    "(attempt %d of %d); retrying",
                    _redact(self.url), attempt, _DDL_ATTEMPTS,
                )  # fmt: skip
                await asyncio.sleep(random.uniform(0.05, 0.2) * attempt)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _ready(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError(f"store {_redact(self.url)}: closed")
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Transaction]:
        pool = self._ready()
        try:
            conn = await pool.acquire()
        except _LOST as exc:
            raise _lost(self, exc, "") from exc
        try:
            yield _PostgresTransaction(self, conn)
        finally:
            await pool.release(conn)

    async def _read(self, sql: str, args: Sequence[Any]) -> list[Row]:
        async with self._connection() as tx:
            return await tx.fetch(sql, *args)


_LOST = (OSError, asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError)
"""A connection refused, reset or closed, or a server shutting down or starting up."""
_UNKNOWN = (
    " during COMMIT: the transaction may or may not have committed (an idempotent "
    "consumer's retry finds out from the ledger)"
)


def _lost(store: Store, exc: BaseException, during: str) -> StoreError:
    return StoreError(
        f"store {_redact(store.url)}: lost the database{during} ({type(exc).__name__}: {exc}); "
        "check that PostgreSQL is up and reachable"
    )


async def _applied(conn: asyncpg.Connection, digest: str) -> bool:
    """Whether the schema of ``digest`` was applied (a read that takes no lock on other tables)."""
    # Looked up first rather than caught: inside a transaction an error would abort it.
    if await conn.fetchval("SELECT to_regclass('millstream_schema')") is None:
        return False
    found = await conn.fetchval("SELECT 1 FROM millstream_schema WHERE digest = $1", digest)
    return found is not None


def _redact(url: str) -> str:
    from millstream.urls import redact

    return redact(url)
