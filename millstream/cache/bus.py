"""How an invalidation reaches the caches of other instances: ``InvalidationBus``.

A bus carries "drop these keys from the cache named X" between the
instances of a service. :class:`LocalBus` does it within one process (the
default when no ``cache_url`` is set); :class:`~millstream.cache.redis_bus.RedisBus`
does it across processes over Redis pub/sub.
"""

from __future__ import annotations

import hashlib
import os
import re
import weakref
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from millstream.errors import ConfigError
from millstream.urls import redact

if TYPE_CHECKING:
    from millstream.cache.read_cache import Cache

__all__ = [
    "EXPECTED_URL",
    "InvalidationBus",
    "LocalBus",
    "check_cache_url",
    "database_number",
    "process_bus",
    "service_channel",
]

EXPECTED_URL = (
    "unset (invalidate within this process only), or redis://[[user]:password@]host:6379[/db] "
    "(rediss:// for TLS)"
)


class InvalidationBus(Protocol):
    """Carries cache invalidations to the other instances of a service.

    ``attach`` may be called before ``start`` and after it; from then on,
    invalidations of that cache's name sent by other instances reach it
    (``Cache.invalidate_local``). ``broadcast`` is called after the sender
    has already dropped the keys locally; it never raises for a transport
    failure (it logs), because the write that caused it has committed.
    A bus that may have missed invalidations (a lost connection) clears
    its attached caches when it is back. ``close`` stops delivery; safe twice.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def broadcast(self, cache: str, keys: list[str]) -> None: ...

    def attach(self, cache: Cache[Any]) -> None: ...


class LocalBus:
    """Delivers invalidations to every attached cache of the same name in this process.

    Several ``Millstream`` apps in one process (or one app's tests) each own
    their own ``Cache`` objects, and all of them must see a write through
    any of them. Caches are held weakly, so a stopped app's caches go away
    with it; ``start`` and ``close`` do nothing, since other apps may still
    share the bus. Delivery happens inside ``broadcast``, on the caller's
    event loop: attached caches must live on that loop too.
    """

    def __init__(self) -> None:
        self._caches: dict[str, weakref.WeakSet[Cache[Any]]] = {}

    async def start(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; other users of the bus keep receiving."""

    def attach(self, cache: Cache[Any]) -> None:
        self._caches.setdefault(cache.name, weakref.WeakSet()).add(cache)

    async def broadcast(self, cache: str, keys: list[str]) -> None:
        """Drop ``keys`` from every cache named ``cache`` (the sender's own again: harmless)."""
        for each in list(self._caches.get(cache, ())):
            each.invalidate_local(keys)


# The one deliberate process-wide object in millstream: "in-process" invalidation
# must reach every app of the process, and apps share nothing else.
_PROCESS_BUS = LocalBus()


def process_bus() -> LocalBus:
    """The bus shared by every app in this process that has no ``cache_url``."""
    return _PROCESS_BUS


def check_cache_url(url: str) -> None:
    """Raise ``ConfigError`` naming ``cache_url`` unless ``url`` is a usable Redis URL."""
    parts = urlsplit(url)
    shown = f"setting cache_url={redact(url)!r}"
    if parts.scheme.lower() not in ("redis", "rediss") or "://" not in url:
        raise ConfigError(f"{shown} is not a Redis URL; expected {EXPECTED_URL}")
    if not parts.hostname:
        raise ConfigError(f"{shown} has no host; expected {EXPECTED_URL}")
    database = parts.path.strip("/") or parse_qs(parts.query).get("db", [""])[-1]
    if database and not database.isdigit():  # redis-py would quietly use database 0
        raise ConfigError(
            f"{shown}: {database!r} is not a database number; expected {EXPECTED_URL}"
        )


def database_number(url: str) -> int:
    """The Redis database a checked ``cache_url`` names (``/7`` or ``?db=7``; else 0)."""
    parts = urlsplit(url)
    database = parts.path.strip("/") or parse_qs(parts.query).get("db", [""])[-1]
    return int(database) if database else 0


def service_channel(channel: str | None, store_url: str | None) -> str:
    """The name the instances of one service share invalidations under.

    ``channel`` (setting ``cache_channel``) when given; else one derived
    from ``store_url``, so that instances sharing a database share
    invalidations and services with databases of their own do not: the
    database's name and a digest of where it is (host, port and database
    for PostgreSQL, the absolute file path for SQLite; never credentials
    or parameters).
    """
    if channel:
        return channel
    if not store_url:
        return "millstream"
    parts = urlsplit(store_url)
    if parts.scheme.lower() == "sqlite":
        path = os.path.abspath(unquote(parts.path)[1:])
        where, name = path, os.path.splitext(os.path.basename(path))[0]
    else:
        host = parts.netloc.rpartition("@")[2].lower()
        if parts.port is None and ":" not in host:
            host += ":5432"
        name = unquote(parts.path).strip("/")
        where = f"{host}/{name}"
    digest = hashlib.sha256(where.encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name) or 'store'}-{digest}"
