"""``Cache``: a local TTL/LRU read cache with single-flight loads and invalidation.

Hot reads are served from an ``OrderedDict`` in this process (O(1) per
operation: a hit moves the key to the end, an insert past ``max_entries``
drops the least recently used entry from the front, an entry past its TTL is
dropped when read). Writes elsewhere reach it through an
:class:`~millstream.cache.bus.InvalidationBus`.

The correctness point is the *stale fill*: a miss starts loading, the row
changes and its invalidation arrives, then the load returns the old row.
Storing it would serve the old row until the TTL ends. So every load runs as
a *flight* that invalidation (of its key, or a ``clear``) marks stale, and a
stale flight hands its value to the callers that waited for it but does not
store it. Marking the flight rather than keeping a generation counter per
key keeps memory bounded by the loads in progress, not by every key ever
invalidated.

A cache belongs to one event loop; it is not thread-safe.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from millstream.errors import ConfigError

if TYPE_CHECKING:
    from millstream.cache.bus import InvalidationBus

__all__ = ["Cache"]

V = TypeVar("V")

Load = Callable[[], Awaitable[V | None]]
LoadMany = Callable[[list[str]], Awaitable[Mapping[str, V]]]


class _Flight(Generic[V]):
    """One load in progress for one key: its result, and whether it may still be stored."""

    __slots__ = ("future", "stale")

    def __init__(self, future: asyncio.Future[V | None]) -> None:
        self.future = future
        self.stale = False


class Cache(Generic[V]):
    """A read cache named ``name``: entries live ``ttl`` seconds, at most ``max_entries``.

    ``None`` means "not cached" everywhere: ``get`` returns it on a miss, a
    load returning it stores nothing, and ``put(key, None)`` drops the key.
    ``hits`` and ``misses`` are plain counters (one per key looked up), read
    by the metrics collector at scrape time. With a ``bus``, ``invalidate``
    reaches the caches of the same name in every other instance.
    """

    def __init__(
        self,
        name: str,
        *,
        ttl: float = 30.0,
        max_entries: int = 10_000,
        bus: InvalidationBus | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not name:
            raise ConfigError("a cache needs a name (it is how instances address invalidations)")
        if not ttl > 0:
            raise ConfigError(f"cache {name!r}: ttl={ttl!r} must be more than 0 seconds")
        if max_entries < 1:
            raise ConfigError(f"cache {name!r}: max_entries={max_entries!r} must be 1 or more")
        self.name = name
        self.ttl = float(ttl)
        self.max_entries = max_entries
        self.bus = bus
        self.hits = 0
        self.misses = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._flights: dict[str, _Flight[V]] = {}
        self._fills: set[asyncio.Task[None]] = set()
        if bus is not None:
            bus.attach(self)

    def __repr__(self) -> str:
        return f"Cache({self.name!r}, ttl={self.ttl}, max_entries={self.max_entries})"

    @property
    def size(self) -> int:
        """Entries held, counting expired ones not yet read (they go when read or evicted)."""
        return len(self._entries)

    # -- reading -------------------------------------------------------------

    def get(self, key: str) -> V | None:
        """The cached value of ``key``, or ``None`` when absent or expired."""
        value = self._lookup(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    async def get_or_load(self, key: str, load: Load[V]) -> V | None:
        """The cached value of ``key``, else what ``load()`` returns (stored unless ``None``).

        Concurrent misses on one key share one ``load`` call (single flight);
        an exception from it reaches every caller waiting on it and caches
        nothing. Cancelling a caller does not cancel the load the others share.
        """
        value = self._lookup(key)
        if value is not None:
            self.hits += 1
            return value
        self.misses += 1
        flight = self._flights.get(key)
        if flight is None:

            async def fetch(keys: list[str]) -> Mapping[str, V]:
                loaded = await load()
                return {} if loaded is None else {key: loaded}

            (flight,) = self._launch([key], fetch)
        return await asyncio.shield(flight.future)

    async def get_many(self, keys: Sequence[str], load_many: LoadMany[V]) -> dict[str, V]:
        """Every key of ``keys`` found, from the cache or from ONE ``load_many(misses)`` call.

        Keys already being loaded (by a concurrent ``get_or_load`` or
        ``get_many``) are awaited, not loaded again; a key ``load_many`` leaves
        out of its result is absent from the answer and not cached.
        """
        found: dict[str, V] = {}
        waiting: dict[str, _Flight[V]] = {}
        missing: list[str] = []
        for key in dict.fromkeys(keys):
            value = self._lookup(key)
            if value is not None:
                self.hits += 1
                found[key] = value
                continue
            self.misses += 1
            flight = self._flights.get(key)
            if flight is None:
                missing.append(key)
            else:
                waiting[key] = flight
        if missing:
            waiting.update(zip(missing, self._launch(missing, load_many), strict=True))
        for key, flight in waiting.items():  # the loads run concurrently; wait for each
            value = await asyncio.shield(flight.future)
            if value is not None:
                found[key] = value
        return found

    # -- writing and invalidating --------------------------------------------

    def put(self, key: str, value: V | None) -> None:
        """Store ``value`` for ``key`` (``None`` drops it); no load in flight will overwrite it."""
        self._supersede(key)
        if value is None:
            self._entries.pop(key, None)
        else:
            self._store(key, value)

    def invalidate_local(self, keys: Iterable[str]) -> None:
        """Drop ``keys`` here, and keep loads in flight for them from storing what they read.

        A lone ``str`` counts as one key, not as its characters.
        """
        for key in _key_list(keys):
            self._entries.pop(key, None)
            self._supersede(key)

    async def invalidate(self, keys: Iterable[str]) -> None:
        """Drop ``keys`` here now, then on every other instance through the bus.

        The local drop always happens; the broadcast is best effort (a bus
        that cannot reach its server logs and returns, see ``RedisBus``), so a
        request that changed data never fails because of its cache.
        """
        key_list = _key_list(keys)
        if not key_list:
            return
        self.invalidate_local(key_list)
        if self.bus is not None:
            await self.bus.broadcast(self.name, key_list)

    def clear(self) -> None:
        """Drop every entry, and keep every load in flight from storing what it read.

        The bus calls this when it may have missed invalidations (a reconnect).
        """
        self._entries.clear()
        flights, self._flights = self._flights, {}
        for flight in flights.values():
            flight.stale = True

    # -- inside ----------------------------------------------------------------

    def _lookup(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def _store(self, key: str, value: V) -> None:
        entries = self._entries
        entries[key] = (self._clock() + self.ttl, value)
        entries.move_to_end(key)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)

    def _supersede(self, key: str) -> None:
        """The flight of ``key`` may carry an older value: let newcomers start a fresh one."""
        flight = self._flights.pop(key, None)
        if flight is not None:
            flight.stale = True

    def _launch(self, keys: list[str], fetch: LoadMany[V]) -> list[_Flight[V]]:
        """Start one task that runs ``fetch(keys)`` and settles a flight for each key."""
        loop = asyncio.get_running_loop()
        flights: list[_Flight[V]] = []
        for key in keys:
            flight: _Flight[V] = _Flight(loop.create_future())
            flight.future.add_done_callback(_retrieve)
            self._flights[key] = flight
            flights.append(flight)
        task = loop.create_task(self._fill(keys, flights, fetch), name=f"cache-fill:{self.name}")
        self._fills.add(task)  # the loop only keeps a weak reference to tasks
        task.add_done_callback(self._fills.discard)
        return flights

    async def _fill(self, keys: list[str], flights: list[_Flight[V]], fetch: LoadMany[V]) -> None:
        try:
            found = await fetch(keys)
        except Exception as exc:
            for key, flight in zip(keys, flights, strict=True):
                self._land(key, flight)
                flight.future.set_exception(exc)
            return
        except BaseException:  # cancelled (the loop is shutting down): waiters must not hang
            for key, flight in zip(keys, flights, strict=True):
                self._land(key, flight)
                flight.future.cancel()
            raise
        for key, flight in zip(keys, flights, strict=True):
            self._land(key, flight)
            value = found.get(key)
            if value is not None and not flight.stale:
                self._store(key, value)
            flight.future.set_result(value)

    def _land(self, key: str, flight: _Flight[V]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]


def _key_list(keys: Iterable[str]) -> list[str]:
    return [keys] if isinstance(keys, str) else list(keys)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an exception as seen: every waiter may have been cancelled before it landed."""
    if not future.cancelled():
        future.exception()
