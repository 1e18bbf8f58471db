"""Prometheus families for read caches, read at scrape time.

The hot path bumps the plain ints ``Cache.hits`` and ``Cache.misses``; this
collector turns them into ``millstream_cache_hits_total``,
``millstream_cache_misses_total`` and ``millstream_cache_entries`` (labelled
``cache``) when /metrics is scraped, as ``_ConsumerCollector`` does for
consumers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from millstream.cache.read_cache import Cache

__all__ = ["CacheCollector", "cache_families", "register_cache_metrics"]


class CacheCollector(Collector):
    """Reports the caches that ``caches()`` returns at each scrape (so later ones count too)."""

    def __init__(self, caches: Callable[[], Iterable[Cache[Any]]]) -> None:
        self._caches = caches

    def collect(self) -> Iterator[Metric]:
        yield from cache_families(list(self._caches()))


def cache_families(caches: Iterable[Cache[Any]]) -> Iterator[Metric]:
    """The hits, misses and entries of ``caches`` as they are now, one sample per cache."""
    hits = CounterMetricFamily(
        "millstream_cache_hits", "Cache lookups answered from the cache.", labels=["cache"]
    )
    misses = CounterMetricFamily(
        "millstream_cache_misses",
        "Cache lookups not in the cache (absent or expired).",
        labels=["cache"],
    )
    entries = GaugeMetricFamily(
        "millstream_cache_entries",
        "Entries held, counting expired ones not yet read.",
        labels=["cache"],
    )
    for cache in caches:
        hits.add_metric([cache.name], cache.hits)
        misses.add_metric([cache.name], cache.misses)
        entries.add_metric([cache.name], cache.size)
    yield from (hits, misses, entries)


def register_cache_metrics(
    registry: CollectorRegistry, caches: Callable[[], Iterable[Cache[Any]]]
) -> CacheCollector:
    """Report ``caches()`` on ``registry``, e.g. ``lambda: ms.caches.values()``."""
    collector = CacheCollector(caches)
    registry.register(collector)
    return collector
