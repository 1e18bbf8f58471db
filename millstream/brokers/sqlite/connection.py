"""The connection to a SQLite broker file: where it is, the thread that owns it, its errors.

sqlite3 blocks, so a :class:`SqliteConnection` keeps its connection on one
dedicated thread and every operation is one hop to it; the event loop only
awaits. This is also the boundary where sqlite3 exceptions become
millstream's. :class:`LiveConnection` is what the broker's subscriptions and
dead-letter queues reach the file through: the connection live now, the
lease, and the wake-ups of fetches waiting on a topic.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from millstream.brokers.sqlite import schema
from millstream.errors import BrokerError, BrokerUnavailable, ConfigError
from millstream.urls import query_seconds

__all__ = ["DEFAULT_LEASE", "EXPECTED", "LiveConnection", "SqliteConnection", "parse_url"]

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_LEASE = 30.0
EXPECTED = (
    "sqlite:///./.millstream/broker.db (relative to the working directory) or "
    "sqlite:////var/lib/app/broker.db (absolute), optionally with ?lease=30&synchronous=NORMAL"
)
_SYNCHRONOUS = ("NORMAL", "FULL")
# SQLite waits this long for another process's write lock before reporting
# "database is locked"; the connection then retries a few times before giving up.
_BUSY_TIMEOUT = 5.0
_BUSY_RETRIES = 3
_BUSY_PAUSE = 0.05


class SqliteConnection:
    """The one thread that owns a broker's sqlite3 connection.

    It is also the boundary where sqlite3 errors become millstream's: a
    closed or unreachable database is ``BrokerUnavailable``, a lock held too
    long by another process is retried here first. An error that leaves the
    connection unusable (I/O, read-only, disk full, corrupt, closed) also
    closes it, so that the next ``open`` really opens the file again, and
    calls ``on_lost`` on the event loop; a busy file or a violated
    constraint leaves it open.
    """

    def __init__(self, url: str, path: Path, synchronous: str, on_lost: Callable[[], None]) -> None:
        self._url = url
        self._path = path
        self._synchronous = synchronous
        self._on_lost = on_lost
        self._opened = 0  # how many times open() opened the file; read on the loop only
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="millstream-sqlite")
        self._conn: sqlite3.Connection | None = None  # touched only on the worker thread

    async def open(self) -> None:
        """Open the file (and its directory) unless already open."""
        if await self._submit(self._open):
            self._opened += 1

    async def run(
        self,
        operation: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``operation(connection, ...)`` on the worker thread."""

        def call(conn: sqlite3.Connection) -> T:
            return operation(conn, *args, **kwargs)

        opened = self._opened
        try:
            return await self._submit(self._invoke, call)
        except _Lost as lost:
            # Only a failure of the connection still open counts; one reported
            # after a reconnect must not take the new connection down with it.
            if opened == self._opened:
                self._on_lost()
            raise lost.error from lost.__cause__

    def drop(self) -> None:
        """Close the connection abruptly, after whatever is already queued."""
        with suppress(RuntimeError):
            self._executor.submit(self._close)

    async def close(self) -> None:
        """Close the connection and let the thread end; later calls raise ``BrokerUnavailable``."""
        with suppress(BrokerUnavailable):
            await self._submit(self._close)
        self._executor.shutdown(wait=False)

    async def _submit(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))
        except RuntimeError as exc:  # the executor was shut down by close()
            raise BrokerUnavailable(f"broker {self._url}: closed") from exc
        return await future

    def _open(self) -> bool:
        if self._conn is not None:
            return False
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"broker URL {self._url!r}: cannot create directory {str(self._path.parent)!r} "
                f"({exc.strerror}); choose a writable path, e.g. {EXPECTED}"
            ) from exc
        try:
            self._conn = schema.open_database(str(self._path), self._synchronous, _BUSY_TIMEOUT)
        except sqlite3.Error as exc:
            raise _translate(exc, self._url) from exc
        return True

    def _invoke(self, call: Callable[[sqlite3.Connection], T]) -> T:
        pause = _BUSY_PAUSE
        attempt = 1
        while True:
            conn = self._conn
            if conn is None:
                raise BrokerUnavailable(f"broker {self._url}: not connected")
            try:
                return call(conn)
            except sqlite3.Error as exc:
                if not (_is_busy(exc) and attempt < _BUSY_RETRIES):
                    raise self._failure(exc) from exc
            time.sleep(pause)  # on the worker thread: only this broker's queue waits
            pause *= 2
            attempt += 1

    def _failure(self, exc: sqlite3.Error) -> Exception:
        """What to raise for ``exc``; a connection it broke is closed first."""
        error = _translate(exc, self._url)
        if not _breaks_connection(exc):
            return error
        self._close()
        return _Lost(error)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(sqlite3.Error):
                conn.close()


class LiveConnection:
    """The broker's connection as its subscriptions and dead-letter queues reach it.

    Each time the broker connects begins an epoch; a subscription made in
    one epoch cannot use the connection of a later one (the file forgot
    its leases when the connection was cut). Fetches waiting on a topic
    sleep here, and whatever this broker publishes wakes them: other
    processes cannot, so those fetches poll.
    """

    def __init__(self, url: str, lease: float) -> None:
        self.url = url
        self.lease = lease
        self._connection: SqliteConnection | None = None
        self._epoch = 0
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    @property
    def epoch(self) -> int:
        """How many times the broker connected."""
        return self._epoch

    @property
    def is_live(self) -> bool:
        """Whether there is a connection to use (connected, and not cut since)."""
        return self._connection is not None

    def begin(self, connection: SqliteConnection) -> None:
        """``connection`` is live from now on, in a new epoch."""
        self._connection = connection
        self._epoch += 1

    def end(self) -> None:
        """No connection is live (closed or cut) until the next ``begin``."""
        self._connection = None

    def current(self, epoch: int | None = None) -> SqliteConnection:
        """The live connection (of ``epoch``, if given), else ``BrokerUnavailable``."""
        connection = self._connection
        if connection is None or (epoch is not None and epoch != self._epoch):
            raise BrokerUnavailable(f"broker {self.url}: not connected")
        return connection

    def wake(self, topic: str) -> None:
        """Wake the fetches waiting on ``topic``: something may be there now."""
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


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def parse_url(url: str) -> tuple[Path, float, str]:
    """(path, lease, synchronous) from a ``sqlite://`` URL, or ``ConfigError``."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigError(f"broker URL {url!r} is not a sqlite URL; expected {EXPECTED}")
    raw = unquote(parts.path)
    if parts.netloc or len(raw) < 2:
        raise ConfigError(
            f"broker URL {url!r} has no path (a SQLite URL has no host: three slashes "
            f"before a relative path, four before an absolute one); expected {EXPECTED}"
        )
    raw = raw[1:]
    if raw == ":memory:":
        raise ConfigError(
            f"broker URL {url!r} is not a file; use memory:// for an in-process broker "
            f"or a file path, e.g. {EXPECTED}"
        )
    if raw.endswith("/"):
        raise ConfigError(f"broker URL {url!r} names a directory; expected a file, {EXPECTED}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"lease", "synchronous"})
    if unknown:
        raise ConfigError(
            f"broker URL {url!r} has unknown parameter(s) {', '.join(unknown)}; "
            f"expected only lease and synchronous, e.g. {EXPECTED}"
        )
    return Path(raw), _parse_lease(url, query), _parse_synchronous(url, query)


def _parse_lease(url: str, query: dict[str, list[str]]) -> float:
    if "lease" not in query:
        return DEFAULT_LEASE
    example = "sqlite:///./.millstream/broker.db?lease=30"
    return query_seconds(url, "lease", query["lease"][-1], example=example)


def _parse_synchronous(url: str, query: dict[str, list[str]]) -> str:
    raw = query.get("synchronous", ["NORMAL"])[-1]
    if raw.upper() not in _SYNCHRONOUS:
        raise ConfigError(
            f"broker URL {url!r}: synchronous={raw!r} is not NORMAL or FULL; "
            "expected e.g. sqlite:///./.millstream/broker.db?synchronous=FULL"
        )
    return raw.upper()


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _breaks_connection(exc: sqlite3.Error) -> bool:
    """Whether the connection is no use after ``exc``, so only reopening the file can help.

    Contention (busy, locked) passes, and so do a violated constraint and
    API misuse. Everything else SQLite reports is about the file or the
    connection: I/O, read-only, disk full, corrupt, not a database, tables
    gone (the file was replaced), closed.
    """
    if isinstance(exc, sqlite3.ProgrammingError):
        return "closed" in str(exc)
    return type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError) and not _is_busy(exc)


class _Lost(Exception):
    """From the worker thread to ``run``: the connection failed and is closed; raise ``error``."""

    def __init__(self, error: BrokerError) -> None:
        super().__init__(str(error))
        self.error = error


def _translate(exc: sqlite3.Error, url: str) -> BrokerError:
    """sqlite3's exception as millstream's: retriable unless the file itself is wrong."""
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
        return BrokerUnavailable(f"broker {url}: the connection is closed")
    if isinstance(exc, sqlite3.OperationalError):
        return BrokerUnavailable(f"broker {url}: {exc}")
    return BrokerError(f"broker {url}: {exc}")
