"""Read caches: a local TTL/LRU cache per instance, invalidated on every instance.

::

    bus = open_bus(settings.cache_url, channel=settings.cache_channel, store_url=settings.store_url)
    cache = Cache("orders", ttl=30, bus=bus)
    order = await cache.get_or_load(order_id, lambda: load_order(order_id))
    ...
    await cache.invalidate([order_id])  # after the write committed

``open_bus(None)`` is the in-process bus (every app in this process);
``open_bus("redis://...")`` carries invalidations between processes
(``millstream.cache.redis_bus.RedisBus``, imported only then: redis is an
optional extra), on a pub/sub channel of the service (``cache_channel``, by
default derived from ``store_url``) and of the database of ``cache_url``:
a Redis server's channels ignore database numbers, and services sharing one
server must not drop each other's entries.
"""

from __future__ import annotations

from millstream.cache.bus import (
    InvalidationBus,
    LocalBus,
    check_cache_url,
    process_bus,
    service_channel,
)
from millstream.cache.metrics import CacheCollector, cache_families, register_cache_metrics
from millstream.cache.read_cache import Cache
from millstream.errors import ConfigError
from millstream.urls import redact

__all__ = [
    "Cache",
    "CacheCollector",
    "InvalidationBus",
    "LocalBus",
    "cache_families",
    "open_bus",
    "process_bus",
    "register_cache_metrics",
]


def open_bus(
    url: str | None, *, channel: str | None = None, store_url: str | None = None
) -> InvalidationBus:
    """The bus for setting ``cache_url``: in-process when ``None``, Redis pub/sub for redis(s)://.

    ``channel`` (setting ``cache_channel``) names the service whose
    instances share invalidations; unset, it is derived from ``store_url``
    (see :func:`~millstream.cache.bus.service_channel`). Raises
    ``ConfigError`` naming ``cache_url`` and the accepted forms for
    anything else, or when the Redis client is not installed.
    """
    if url is None:
        return process_bus()
    check_cache_url(url)
    try:
        from millstream.cache.redis_bus import RedisBus
    except ImportError as exc:
        raise ConfigError(
            f"setting cache_url={redact(url)!r} needs the Redis client ({exc}); "
            "install it with: pip install 'millstream[redis]'"
        ) from None
    return RedisBus(url, service_channel(channel, store_url))
