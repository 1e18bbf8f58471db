"""The read cache alone: TTL and LRU, single flight, the stale-fill race, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from millstream.cache import (
    Cache,
    register_cache_metrics,
)
from millstream.errors import ConfigError
from tests.support import until


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
