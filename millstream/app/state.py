"""``State``: what an app keeps besides messages: the store, its outbox relay, the read caches.

Each part exists only once it is used: the store on first use of
``ms.store``, the invalidation bus with the first cache. The app opens the
state before its broker connects and closes it after its consumers have
drained, in this order: the bus, the store (schema included), the relay;
then the relay (flushing what it can), the store, the bus.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from millstream.errors import ConfigError
from millstream.runtime.chains import Publish
from millstream.runtime.handler import Handler, HandlerLink, injected_types
from millstream.settings import Settings
from millstream.store import Store, Transaction, open_store
from millstream.store.handlers import in_transaction
from millstream.store.outbox import OutboxRelay

if TYPE_CHECKING:
    from millstream.cache import Cache, InvalidationBus

__all__ = ["State"]


class State:
    """The store, the outbox relay and the read caches of one app.

    ``publish`` is how the relay publishes (the app's publish chain, so
    tracing and metrics see outbox messages); ``reconnect`` is how it waits
    for a broker that was down.
    """

    def __init__(
        self,
        settings: Settings,
        publish: Publish,
        reconnect: Callable[[], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self._publish = publish
        self._reconnect = reconnect
        self._running = False
        self._store: Store | None = None
        self._relay: OutboxRelay | None = None
        self._caches: dict[str, Cache[Any]] = {}
        self._bus: InvalidationBus | None = None

    # -- the parts -------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The store (``store_url``), made on first use; its relay starts at once if running."""
        if self._store is None:
            self._store = open_store(self.settings.store_url)
            if self._running:
                self._start_relay(self._store)
        return self._store

    @property
    def opened_store(self) -> Store | None:
        """The store if it was used, without making it."""
        return self._store

    @property
    def relay(self) -> OutboxRelay | None:
        """The outbox relay, running while the state is open with a store."""
        return self._relay

    @property
    def caches(self) -> Mapping[str, Cache[Any]]:
        return self._caches

    def cache(self, name: str, *, ttl: float, max_entries: int) -> Cache[Any]:
        """A new read cache named ``name`` on the invalidation bus (``cache_url``)."""
        if name in self._caches:
            raise ConfigError(f"a cache named {name!r} already exists; give this one another name")
        # The cache package loads the Redis bus only when cache_url asks for it.
        from millstream.cache import Cache, open_bus

        if self._bus is None:
            settings = self.settings
            self._bus = open_bus(
                settings.cache_url, channel=settings.cache_channel, store_url=settings.store_url
            )
        cache: Cache[Any] = Cache(name, ttl=ttl, max_entries=max_entries, bus=self._bus)
        self._caches[name] = cache
        return cache

    def handler_links(self, handler: Handler, *, idempotent: bool) -> tuple[HandlerLink, ...]:
        """The link running ``handler`` in a store transaction, if it takes one or is idempotent."""
        if idempotent or Transaction in injected_types(handler):
            return (in_transaction(lambda: self.store, idempotent=idempotent),)
        return ()

    def use(self, settings: Settings) -> Callable[[], None]:
        """Run on ``settings`` (its ``store_url``) until the returned undo is called.

        Before the state opens only. A store already made is replaced by a
        new one for the new ``store_url``, with the same schema, so the
        app's own store is left as it was; the undo puts it back.
        """
        previous = (self.settings, self._store)
        self.settings = settings
        if self._store is not None:
            store = open_store(settings.store_url)
            store.adopt_schema(self._store)
            self._store = store

        def undo() -> None:
            self.settings, self._store = previous

        return undo

    # -- opening and closing -----------------------------------------------------

    async def open(self) -> None:
        """Start the cache bus, open the store (schema included) and start the relay."""
        if self._bus is not None:
            await self._bus.start()
        if self._store is not None:
            try:
                await self._store.open()
            except BaseException:
                await self.close()
                raise
            self._start_relay(self._store)
        self._running = True

    async def close(self) -> None:
        """Flush the outbox (at most 5 s, or ``drain_timeout``), close the store, then the bus."""
        self._running = False
        relay, self._relay = self._relay, None
        try:
            if relay is not None:
                await relay.stop(flush_timeout=min(5.0, self.settings.drain_timeout))
        finally:
            try:
                if self._store is not None:
                    await self._store.close()
            finally:
                if self._bus is not None:
                    await self._bus.close()

    def _start_relay(self, store: Store) -> None:
        settings = self.settings
        self._relay = OutboxRelay(
            store,
            self._publish,
            self._reconnect,
            batch=settings.outbox_batch,
            poll_interval=settings.outbox_poll_interval,
            processed_retention=settings.idempotency_retention,
        )
        self._relay.start()
