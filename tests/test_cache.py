"""Read caches: TTL/LRU, single flight, the stale-fill race, and invalidation across instances.

The cache logic runs in process (a fake clock where time matters). The Redis
bus runs against the shared Redis at 127.0.0.1:6379, each test on the channel
of a service named by a fresh uuid (pub/sub leaves no keys behind), with a TCP proxy in
between where the network has to break.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry, generate_latest

from millstream import Millstream
from millstream.cache import (
    Cache,
    LocalBus,
    open_bus,
    process_bus,
    redis_bus,
    register_cache_metrics,
)
from millstream.cache.bus import service_channel
from millstream.cache.redis_bus import RedisBus
from millstream.errors import ConfigError
from tests.brokers.redis_server import RedisServer, free_port
from tests.conftest import require_service
from tests.proxy import TcpProxy
from tests.support import until

SHARED = "redis://127.0.0.1:6379/0"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loads:
    """A loader that counts its calls and can be held until the test lets it finish."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.calls: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def one(self, key: str) -> str | None:
        self.calls.append([key])
        value = self.values.get(key)  # read now, returned when the gate opens
        await self.gate.wait()
        return value

    async def many(self, keys: list[str]) -> dict[str, str]:
        self.calls.append(keys)
        found = {key: self.values[key] for key in keys if key in self.values}
        await self.gate.wait()
        return found


@pytest.fixture
def shared() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return SHARED


@pytest.fixture
def service() -> str:
    return f"test-cache-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def proxy(shared: str) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 6379) as running:
        yield running


@pytest.fixture
async def buses() -> AsyncIterator[list[RedisBus]]:
    """Buses a test opens; all closed afterwards."""
    opened: list[RedisBus] = []
    yield opened
    for bus in opened:
        await bus.close()


async def started(buses: list[RedisBus], url: str, service: str) -> RedisBus:
    bus = RedisBus(url, service, heartbeat=0.5)
    buses.append(bus)
    await bus.start()
    return bus


# -- the cache alone ------------------------------------------------------------


async def test_hits_and_misses_are_counted_per_key() -> None:
    cache: Cache[str] = Cache("c")
    assert cache.get("a") is None
    cache.put("a", "A")
    assert cache.get("a") == "A"
    loads = Loads({"b": "B", "c": "C"})
    assert await cache.get_or_load("b", lambda: loads.one("b")) == "B"
    assert await cache.get_or_load("b", lambda: loads.one("b")) == "B"
    assert await cache.get_many(["a", "b", "c", "x"], loads.many) == {"a": "A", "b": "B", "c": "C"}
    assert (cache.hits, cache.misses, cache.size) == (4, 4, 3)


async def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache: Cache[str] = Cache("c", ttl=10, clock=clock)
    cache.put("a", "A")
    clock.now += 9.9
    assert cache.get("a") == "A"
    clock.now += 0.1
    assert cache.get("a") is None
    assert cache.size == 0
    loads = Loads({"a": "A2"})
    assert await cache.get_or_load("a", lambda: loads.one("a")) == "A2"
    assert loads.calls == [["a"]]


async def test_the_least_recently_used_entry_is_evicted() -> None:
    cache: Cache[int] = Cache("c", max_entries=3)
    for n, key in enumerate("abc"):
        cache.put(key, n)
    assert cache.get("a") == 0  # now b is the least recently used
    cache.put("d", 3)
    assert cache.size == 3
    assert cache.get("b") is None
    assert [cache.get(key) for key in "acd"] == [0, 2, 3]


async def test_none_is_never_cached() -> None:
    cache: Cache[str] = Cache("c")
    loads = Loads({})
    assert await cache.get_or_load("a", lambda: loads.one("a")) is None
    assert await cache.get_or_load("a", lambda: loads.one("a")) is None
    assert len(loads.calls) == 2
    cache.put("b", "B")
    cache.put("b", None)
    assert cache.get("b") is None


def test_settings_out_of_range_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="ttl=0 must be more than 0"):
        Cache("c", ttl=0)
    with pytest.raises(ConfigError, match="max_entries=0 must be 1 or more"):
        Cache("c", max_entries=0)


async def test_concurrent_misses_share_one_load() -> None:
    cache: Cache[str] = Cache("c")
    loads = Loads({"a": "A"})
    loads.gate.clear()
    readers = [
        asyncio.create_task(cache.get_or_load("a", lambda: loads.one("a"))) for _ in range(20)
    ]
    await asyncio.sleep(0)
    loads.gate.set()
    assert await asyncio.gather(*readers) == ["A"] * 20
    assert loads.calls == [["a"]]
    assert cache.get("a") == "A"


async def test_a_failed_load_reaches_every_waiter_and_caches_nothing() -> None:
    cache: Cache[str] = Cache("c")
    gate = asyncio.Event()
    calls = 0

    async def broken() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise RuntimeError("database down")

    readers = [asyncio.create_task(cache.get_or_load("a", broken)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*readers, return_exceptions=True)
    assert [str(result) for result in results] == ["database down"] * 3
    assert calls == 1
    assert cache.size == 0
    loads = Loads({"a": "A"})
    assert await cache.get_or_load("a", lambda: loads.one("a")) == "A"  # no failed flight left


async def test_cancelling_one_reader_does_not_cancel_the_shared_load() -> None:
    cache: Cache[str] = Cache("c")
    loads = Loads({"a": "A"})
    loads.gate.clear()
    first = asyncio.create_task(cache.get_or_load("a", lambda: loads.one("a")))
    second = asyncio.create_task(cache.get_or_load("a", lambda: loads.one("a")))
    await asyncio.sleep(0)
    first.cancel()
    loads.gate.set()
    assert await second == "A"
    assert first.cancelled()
    assert cache.get("a") == "A"


async def test_get_many_loads_every_miss_in_one_call() -> None:
    cache: Cache[str] = Cache("c")
    cache.put("a", "A")
    loads = Loads({key: key.upper() for key in "bcde"})
    loads.gate.clear()
    pending = asyncio.create_task(cache.get_or_load("b", lambda: loads.one("b")))
    await asyncio.sleep(0)
    many = asyncio.create_task(cache.get_many(["a", "b", "c", "d", "c", "x"], loads.many))
    await asyncio.sleep(0)
    loads.gate.set()
    assert await many == {"a": "A", "b": "B", "c": "C", "d": "D"}
    assert await pending == "B"
    # b was already being loaded: joined, not loaded again; one call for c, d and x.
    assert loads.calls == [["b"], ["c", "d", "x"]]
    assert await cache.get_many(["a", "b", "c", "d"], loads.many) == {k: k.upper() for k in "abcd"}
    assert len(loads.calls) == 2


async def test_an_invalidation_during_a_load_keeps_the_stale_value_out() -> None:
    """Miss, load reads the old row, the write commits and invalidates, the load returns."""
    cache: Cache[str] = Cache("c")
    loads = Loads({"a": "old", "b": "old", "c": "old"})
    loads.gate.clear()
    one = asyncio.create_task(cache.get_or_load("a", lambda: loads.one("a")))
    many = asyncio.create_task(cache.get_many(["b", "c"], loads.many))
    await until(lambda: len(loads.calls) == 2)  # both loads have read the old rows
    loads.values.update(a="new", b="new", c="new")  # the write...
    cache.invalidate_local(["a", "b"])  # ...and its invalidation, while the loads run
    cache.clear()  # a bus reconnect does the same for every key (c)
    # A reader arriving now must not join the stale load: it loads the new row.
    fresh = asyncio.create_task(cache.get_or_load("a", lambda: loads.one("a")))
    await until(lambda: len(loads.calls) == 3)
    loads.gate.set()
    assert await one == "old"  # those who asked before the write may see it...
    assert await many == {"b": "old", "c": "old"}
    assert await fresh == "new"
    assert [cache.get(key) for key in "abc"] == ["new", None, None]  # ...nobody after it


async def test_a_put_during_a_load_is_not_overwritten_by_it() -> None:
    cache: Cache[str] = Cache("c")
    loads = Loads({"a": "old"})
    loads.gate.clear()
    reader = asyncio.create_task(cache.get_or_load("a", lambda: loads.one("a")))
    await asyncio.sleep(0)
    cache.put("a", "new")
    loads.gate.set()
    assert await reader == "old"
    assert cache.get("a") == "new"


async def test_a_lone_string_is_one_key() -> None:
    cache: Cache[str] = Cache("c")
    cache.put("ab", "AB")
    cache.put("a", "A")
    await cache.invalidate("ab")
    assert (cache.get("ab"), cache.get("a")) == (None, "A")


def test_metrics_report_every_cache_at_scrape_time() -> None:
    registry = CollectorRegistry()
    caches: list[Cache[str]] = [Cache("orders")]
    register_cache_metrics(registry, lambda: caches)
    caches.append(Cache("users"))  # made after registering: still reported
    caches[0].put("a", "A")
    caches[0].get("a")
    caches[0].get("b")
    caches[0].get("c")
    text = generate_latest(registry).decode()
    assert 'millstream_cache_hits_total{cache="orders"} 1.0' in text
    assert 'millstream_cache_misses_total{cache="orders"} 2.0' in text
    assert 'millstream_cache_entries{cache="orders"} 1.0' in text
    assert 'millstream_cache_hits_total{cache="users"} 0.0' in text


# -- buses ----------------------------------------------------------------------


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


async def test_redis_bus_invalidates_the_other_instance(
    shared: str, service: str, buses: list[RedisBus]
) -> None:
    first, second = await started(buses, shared, service), await started(buses, shared, service)
    assert first.connected and second.connected and first.origin != second.origin
    one: Cache[str] = Cache("orders", bus=first)
    two: Cache[str] = Cache("orders", bus=second)
    users: Cache[str] = Cache("users", bus=second)
    for cache in (one, two, users):
        cache.put("1", "old")
        cache.put("2", "old")
    await one.invalidate(["1"])
    await until(lambda: two.size == 1)
    assert (two.get("1"), two.get("2"), users.get("1")) == (None, "old", "old")
    # The sender skips its own message: what it stores after invalidating stays.
    one.put("1", "new")
    await two.invalidate(["2"])  # published after the first: delivered after it, too
    await until(lambda: one.get("2") is None)
    assert one.get("1") == "new"


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


async def test_a_malformed_message_is_ignored(
    shared: str, service: str, buses: list[RedisBus], caplog: pytest.LogCaptureFixture
) -> None:
    first, second = await started(buses, shared, service), await started(buses, shared, service)
    one: Cache[str] = Cache("orders", bus=first)
    two: Cache[str] = Cache("orders", bus=second)
    two.put("1", "old")
    client = redis.asyncio.Redis.from_url(shared)
    try:
        await client.publish(first.channel, b"not json")
        await client.publish(first.channel, b'{"origin": "x", "cache": "orders", "keys": "1"}')
    finally:
        await client.aclose()
    await one.invalidate(["1"])
    await until(lambda: two.get("1") is None)
    assert caplog.text.count("ignored a malformed invalidation") == 4  # 2 on each bus
    assert second.connected


async def test_a_cut_connection_clears_the_caches_and_resumes(
    shared: str, service: str, proxy: TcpProxy, buses: list[RedisBus]
) -> None:
    direct = await started(buses, shared, service)
    behind = await started(buses, f"redis://127.0.0.1:{proxy.port}/0", service)
    assert behind.connected
    one: Cache[str] = Cache("orders", bus=direct)
    two: Cache[str] = Cache("orders", bus=behind)
    two.put("1", "old")
    proxy.pause()
    proxy.cut()
    await until(lambda: not behind.connected)
    # Sent while the other is away: it never sees this message...
    await one.invalidate(["2"])
    two.put("2", "stale")
    proxy.resume()
    await until(lambda: behind.connected and behind.reconnects == 1)
    assert two.size == 0  # ...so it cleared everything on reconnect
    two.put("3", "old")
    await one.invalidate(["3"])
    await until(lambda: two.get("3") is None)


async def test_a_broadcast_that_fails_is_logged_and_sent_after_reconnect(
    shared: str,
    service: str,
    proxy: TcpProxy,
    buses: list[RedisBus],
    caplog: pytest.LogCaptureFixture,
) -> None:
    direct = await started(buses, shared, service)
    behind = await started(buses, f"redis://127.0.0.1:{proxy.port}/0", service)
    one: Cache[str] = Cache("orders", bus=behind)
    two: Cache[str] = Cache("orders", bus=direct)
    two.put("1", "old")
    proxy.pause()
    proxy.cut()
    await one.invalidate(["1"])  # does not raise into the request
    assert "could not send the invalidation of 1 key(s)" in caplog.text
    assert two.get("1") == "old"
    proxy.resume()
    await until(lambda: two.get("1") is None)


async def test_too_many_unsent_keys_invalidate_the_whole_cache_elsewhere(
    shared: str,
    service: str,
    proxy: TcpProxy,
    buses: list[RedisBus],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_bus, "MAX_UNSENT", 2)
    direct = await started(buses, shared, service)
    behind = await started(buses, f"redis://127.0.0.1:{proxy.port}/0", service)
    one: Cache[str] = Cache("orders", bus=behind)
    two: Cache[str] = Cache("orders", bus=direct)
    users: Cache[str] = Cache("users", bus=direct)
    for key in "abcz":
        two.put(key, "old")
    users.put("a", "old")
    proxy.pause()
    proxy.cut()
    await until(lambda: not behind.connected)
    await one.invalidate(["a", "b"])
    await one.invalidate(["c"])  # past the limit: remembered as "the whole cache"
    proxy.resume()
    await until(lambda: two.size == 0)
    assert users.get("a") == "old"


async def test_unreachable_redis_does_not_stop_the_start(
    buses: list[RedisBus], service: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="millstream")
    with TcpProxy("127.0.0.1", free_port()) as nowhere:  # nothing listens behind it
        bus = RedisBus(f"redis://127.0.0.1:{nowhere.port}/0", service, heartbeat=0.5)
        buses.append(bus)
        await asyncio.wait_for(bus.start(), 5)
        assert not bus.connected
        assert "cache bus cannot reach" in caplog.text
        cache: Cache[str] = Cache("orders", bus=bus)
        cache.put("1", "one")
        assert cache.get("1") == "one"  # serves local data meanwhile
        await cache.invalidate(["1"])  # logs, does not raise
        assert cache.get("1") is None


async def test_the_bus_connects_once_redis_answers(
    shared: str, service: str, proxy: TcpProxy, buses: list[RedisBus]
) -> None:
    proxy.pause()
    behind = await started(buses, f"redis://127.0.0.1:{proxy.port}/0", service)
    assert not behind.connected
    two: Cache[str] = Cache("orders", bus=behind)
    two.put("1", "maybe stale")
    proxy.resume()
    await until(lambda: behind.connected)
    assert two.size == 0  # filled before the subscription: may have missed invalidations
    direct = await started(buses, shared, service)
    one: Cache[str] = Cache("orders", bus=direct)
    two.put("1", "old")
    await one.invalidate(["1"])
    await until(lambda: two.get("1") is None)


async def test_a_server_that_stops_answering_is_noticed_by_the_heartbeat(
    tmp_path: Path, service: str, buses: list[RedisBus]
) -> None:
    """A connection that hangs without closing: only the pings can tell."""
    with RedisServer(tmp_path) as server:
        bus = await started(buses, server.url, service)  # heartbeat 0.5 s
        cache: Cache[str] = Cache("orders", bus=bus)
        cache.put("1", "old")
        process = server._process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)
        try:
            await until(lambda: not bus.connected, within=5)
        finally:
            os.kill(process.pid, signal.SIGCONT)
        await until(lambda: bus.connected and bus.reconnects == 1, within=15)
        assert cache.size == 0
        await bus.close()


async def test_refused_credentials_are_logged_with_the_fix(
    tmp_path: Path, service: str, buses: list[RedisBus], caplog: pytest.LogCaptureFixture
) -> None:
    with RedisServer(tmp_path, password="s3cret") as server:
        bus = await started(buses, f"redis://127.0.0.1:{server.port}/0", service)
        assert not bus.connected
        assert "setting cache_url='redis://127.0.0.1" in caplog.text
        assert "put the right user and password in the URL" in caplog.text
        await bus.close()
