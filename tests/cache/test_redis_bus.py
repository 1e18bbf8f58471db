"""The Redis invalidation bus across instances, and through malformed messages, cuts and outages."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest
import redis.asyncio

from millstream.cache import (
    Cache,
    redis_bus,
)
from millstream.cache.redis_bus import RedisBus
from tests.brokers.redis_server import RedisServer, free_port
from tests.proxy import TcpProxy
from tests.support import until


async def started(buses: list[RedisBus], url: str, service: str) -> RedisBus:
    bus = RedisBus(url, service, heartbeat=0.5)
    buses.append(bus)
    await bus.start()
    return bus


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
