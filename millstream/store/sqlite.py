"""The SQLite store: one file, one writer thread, one reader thread.

SQLite allows one writer at a time, so transactions take an asyncio lock
and run, statement by statement, on a thread that owns the write
connection (``BEGIN IMMEDIATE``: the write lock is taken at the start, so a
transaction never fails half way for another process's write). Reads
outside a transaction go to a second connection on its own thread and,
in WAL mode, never wait for a writer.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from millstream.errors import ConfigError, StoreError
from millstream.store.base import Store
from millstream.store.schema import UPGRADES
from millstream.store.transaction import Row, Transaction

__all__ = ["SqliteStore", "sqlite_sql"]

T = TypeVar("T")

EXPECTED = (
    "sqlite:///./.millstream/state.db (relative to the working directory) or "
    "sqlite:////var/lib/app/state.db (absolute)"
)
_PARAMETER = re.compile(r"\$(\d+)")
_BUSY_TIMEOUT_MS = 5000


def sqlite_sql(sql: str) -> str:
    """``$1``-style parameters as SQLite's ``?1``."""
    return _PARAMETER.sub(r"?\1", sql)


def _parse(url: str) -> tuple[Path, str]:
    parts = urlsplit(url)
    raw = unquote(parts.path)
    if parts.scheme.lower() != "sqlite" or parts.netloc or len(raw) < 2 or raw.endswith("/"):
        raise ConfigError(
            f"setting store_url = {url!r} is not a SQLite file URL; expected {EXPECTED}"
        )
    if raw[1:] == ":memory:":
        raise ConfigError(
            f"setting store_url = {url!r}: an in-memory database is not shared between "
            f"connections; use a file, e.g. {EXPECTED}"
        )
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"synchronous"})
    synchronous = query.get("synchronous", ["FULL"])[-1].upper()
    if unknown or synchronous not in ("FULL", "NORMAL"):
        raise ConfigError(
            f"setting store_url = {url!r}: the only parameter is synchronous=FULL (the "
            f"default) or NORMAL; e.g. {EXPECTED}?synchronous=FULL"
        )
    return Path(raw[1:]), synchronous


class _Thread:
    """One sqlite3 connection, used only on its own thread (started again after a close)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self.conn: sqlite3.Connection | None = None

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, function, *args)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    def shutdown(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


def _translate(exc: sqlite3.Error) -> Exception:
    """A database error the caller can tell apart from a bug in its SQL."""
    if isinstance(exc, sqlite3.IntegrityError):
        return exc  # a constraint the handler may well expect; keep its type
    return StoreError(f"store: {exc}")


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _rows(cursor: sqlite3.Cursor) -> list[Row]:
    return [dict(row) for row in cursor.fetchall()]


class _SqliteTransaction(Transaction):
    dialect = "sqlite"

    def __init__(self, store: Store, thread: _Thread) -> None:
        super().__init__(store)
        self._thread = thread

    def _conn(self) -> sqlite3.Connection:
        """The connection, inside this transaction: BEGIN rides with the first statement.

        ``BEGIN IMMEDIATE`` takes the write lock at once, so no statement
        fails half way for another process's write; sent with the first
        statement, it costs no thread hop of its own.
        """
        conn = self._thread.conn
        if conn is None:
            raise StoreError("store: the connection was closed")
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        return conn

    async def _execute(self, sql: str, args: Sequence[Any]) -> int:
        def run() -> int:
            return self._conn().execute(sqlite_sql(sql), args).rowcount

        return await self._thread.run(run)

    async def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        def run() -> None:
            self._conn().executemany(sqlite_sql(sql), rows)

        await self._thread.run(run)

    async def _fetch(self, sql: str, args: Sequence[Any]) -> list[Row]:
        def run() -> list[Row]:
            return _rows(self._conn().execute(sqlite_sql(sql), args))

        return await self._thread.run(run)

    async def _begin(self) -> None:
        """Nothing yet: the first statement begins (see ``_conn``)."""

    async def _commit(self) -> None:
        def run() -> None:
            conn = self._thread.conn
            if conn is None:
                raise StoreError("store: the connection was closed")
            if conn.in_transaction:
                conn.execute("COMMIT")

        await self._thread.run(run)

    async def _rollback(self) -> None:
        def run() -> None:
            # Queued behind any statement still running (the thread is FIFO), a
            # BEGIN abandoned by a cancelled caller included.
            conn = self._thread.conn
            if conn is not None and conn.in_transaction:
                conn.execute("ROLLBACK")

        await self._thread.run(run)


class SqliteStore(Store):
    """A store in one SQLite file (``sqlite:///./.millstream/state.db?synchronous=FULL``).

    ``synchronous`` is FULL by default: a commit is on disk before a handler's
    message is acked or a request answered, even if the machine loses power.
    NORMAL trades the last commits before such a crash for speed.
    """

    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._path, self._synchronous = _parse(url)
        self._writer = _Thread("millstream-store-w")
        self._reader = _Thread("millstream-store-r")
        self._write_lock = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        return self._writer.conn is not None

    async def _open(self) -> None:
        scripts = self._scripts()
        path, synchronous = self._path, self._synchronous

        def open_writer() -> None:
            try:
                conn = _connect(path, synchronous)
            except OSError as exc:
                raise ConfigError(
                    f"setting store_url = {self.url!r}: cannot create "
                    f"{str(path.parent)!r} ({exc.strerror}); choose a writable path, "
                    f"e.g. {EXPECTED}"
                ) from exc
            try:
                for script in scripts:
                    conn.executescript(script)
                _upgrade(conn)
            except BaseException:
                conn.close()
                raise
            self._writer.conn = conn

        def open_reader() -> None:
            self._reader.conn = _connect(path, synchronous)

        await self._writer.run(open_writer)
        await self._reader.run(open_reader)

    async def close(self) -> None:
        for thread in (self._writer, self._reader):
            conn, thread.conn = thread.conn, None
            if conn is not None:
                with suppress(StoreError):
                    await thread.run(conn.close)
            thread.shutdown()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Transaction]:
        # SQLite has one writer: transactions of this process take turns here
        # rather than spin on the file lock.
        async with self._write_lock:
            yield _SqliteTransaction(self, self._writer)

    async def _read(self, sql: str, args: Sequence[Any]) -> list[Row]:
        reader = self._reader

        def run() -> list[Row]:
            if reader.conn is None:
                raise StoreError(f"store {self.url}: closed")
            return _rows(reader.conn.execute(sqlite_sql(sql), args))

        return await reader.run(run)


def _upgrade(conn: sqlite3.Connection) -> None:
    """Add the columns a store created by an older millstream lacks."""
    for table, column, kind in UPGRADES:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
