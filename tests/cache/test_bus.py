"""Which bus a cache uses, and who shares its invalidations: one process, service or channel."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from millstream import Millstream
from millstream.cache import (
    Cache,
    LocalBus,
    open_bus,
    process_bus,
)
from millstream.cache.bus import service_channel
from millstream.cache.redis_bus import RedisBus
from millstream.errors import ConfigError
from tests.support import until


def test_open_bus_chooses_by_cache_url() -> None:
    assert open_bus(None) is process_bus()
    assert isinstance(open_bus("redis://127.0.0.1:6379/0"), RedisBus)
    assert isinstance(open_bus("rediss://cache.internal:6380"), RedisBus)
    by_query = open_bus("redis://127.0.0.1:6379?db=7", channel="orders")
    assert isinstance(by_query, RedisBus) and by_query.channel == "millstream:cache:7:orders"
    for wrong, problem in [
        ("memcached://127.0.0.1:11211", "is not a Redis URL"),
        ("127.0.0.1:6379", "is not a Redis URL"),
        ("redis://", "has no host"),
        ("redis://127.0.0.1:6379/cache", "is not a database number"),
        ("redis://127.0.0.1:6379?db=seven", "is not a database number"),
    ]:
        with pytest.raises(ConfigError, match=problem) as raised:
            open_bus(wrong)
        assert "cache_url" in str(raised.value) and "redis://" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        open_bus("redis://:s3cret@127.0.0.1/x")
    assert "s3cret" not in str(raised.value)


async def test_local_bus_reaches_every_cache_of_the_name_in_the_process() -> None:
    bus = LocalBus()
    a: Cache[str] = Cache("orders", bus=bus)
    b: Cache[str] = Cache("orders", bus=bus)
    other: Cache[str] = Cache("users", bus=bus)
    for cache in (a, b, other):
        cache.put("1", "one")
    await a.invalidate(["1"])
    assert (a.get("1"), b.get("1"), other.get("1")) == (None, None, "one")


async def test_two_apps_in_one_process_share_invalidations() -> None:
    """A write through one app invalidates the other's cached read (no cache_url)."""
    first, second = Millstream("memory://"), Millstream("memory://")
    name = f"orders-{uuid.uuid4().hex[:8]}"
    async with first, second:
        one, two = first.cache(name), second.cache(name)
        one.put("1", "old")
        two.put("1", "old")
        await one.invalidate(["1"])
        assert (one.get("1"), two.get("1")) == (None, None)


async def test_two_apps_with_a_cache_url_share_invalidations(shared: str) -> None:
    name = f"orders-{uuid.uuid4().hex[:8]}"
    first = Millstream("memory://", cache_url=shared)
    second = Millstream("memory://", cache_url=shared)
    one, two = first.cache(name), second.cache(name)
    async with first, second:
        two.put("1", "old")
        await one.invalidate(["1"])
        await until(lambda: two.get("1") is None)


async def test_apps_of_two_services_on_one_redis_keep_their_invalidations_apart(
    shared: str, tmp_path: Path
) -> None:
    name = f"orders-{uuid.uuid4().hex[:8]}"
    orders = Millstream("memory://", cache_url=shared, store_url=f"sqlite:///{tmp_path}/o.db")
    billing = Millstream("memory://", cache_url=shared, store_url=f"sqlite:///{tmp_path}/b.db")
    twin = Millstream("memory://", cache_url=shared, store_url=f"sqlite:///{tmp_path}/o.db")
    mine, theirs, peer = orders.cache(name), billing.cache(name), twin.cache(name)
    async with orders, billing, twin:
        theirs.put("1", "old")
        peer.put("1", "old")
        await mine.invalidate(["1"])
        await until(lambda: peer.get("1") is None)  # another instance of the same service
        await asyncio.sleep(0.1)  # Redis sent it to every subscriber of its channel at once
        assert theirs.get("1") == "old"


async def test_services_sharing_a_redis_server_keep_their_invalidations_apart(
    shared: str, service: str, buses: list[RedisBus]
) -> None:
    """Two instances of one service share invalidations; the same service name on database
    7, or another service on database 0, never sees them (a Redis server delivers a channel's
    messages to subscribers of every database)."""
    db7 = shared.removesuffix("/0") + "/7"
    other = f"{service}-other"

    async def bus(url: str, name: str) -> RedisBus:
        opened = open_bus(url, channel=name, store_url="postgresql://db/orders")
        assert isinstance(opened, RedisBus)
        buses.append(opened)
        await opened.start()
        return opened

    sender, peer = await bus(shared, service), await bus(shared, service)
    elsewhere = {"db 7": await bus(db7, service), "another service": await bus(shared, other)}
    peers = {"db 7": await bus(db7, service), "another service": await bus(shared, other)}
    caches: dict[str, Cache[str]] = {}
    for label, each in [("sender", sender), ("peer", peer), *elsewhere.items()]:
        caches[label] = Cache("orders", bus=each)
        caches[label].put("1", "old")
        caches[label].put("sentinel", "old")
    await caches["sender"].invalidate(["1"])
    await until(lambda: caches["peer"].get("1") is None)
    for label, isolated in elsewhere.items():
        # Published after the invalidation above: had that reached this bus, it came first.
        await Cache("orders", bus=peers[label]).invalidate(["sentinel"])
        await until(lambda: caches[label].get("sentinel") is None)  # noqa: B023
        assert caches[label].get("1") == "old", f"{label}: {isolated.channel}"


def test_the_default_channel_is_the_service_store() -> None:
    """Instances of one database share a channel whatever their credentials or pool size."""
    pg = "postgresql://{}@db.internal{}/orders{}"
    same = {
        service_channel(None, pg.format("app:secret", ":5432", "")),
        service_channel(None, pg.format("reader", "", "?pool_size=3")),
        service_channel(None, pg.format("app", "", "")),
    }
    assert len(same) == 1 and next(iter(same)).startswith("orders-")
    assert "secret" not in next(iter(same))
    others = {
        service_channel(None, pg.format("app", "", "")),
        service_channel(None, "postgresql://app@db.internal/billing"),
        service_channel(None, "postgresql://app@db.other/orders"),
        service_channel(None, "sqlite:///./a/state.db"),
        service_channel(None, "sqlite:///./b/state.db"),
    }
    assert len(others) == 5
    assert service_channel(None, "sqlite:///./a/state.db") == service_channel(
        None, f"sqlite:///{Path('a/state.db').absolute()}"
    )
    assert service_channel("billing", "postgresql://app@db.internal/orders") == "billing"
