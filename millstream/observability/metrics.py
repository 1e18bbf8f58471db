"""Prometheus metrics for consumers, publishing and the event loop.

Counters the runtime already keeps (``ConsumerStats``, handler durations
included) are read at scrape time by a collector, so the hot path bumps
plain numbers and no link is added to the handler chain. Publish latency is
a histogram observed by a publish link.
Each ``Metrics`` owns its registry: no global state, two apps in one process
do not collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from millstream.message import OutgoingMessage
from millstream.runtime.chains import Publish
from millstream.runtime.consumer import ConsumerRuntime, ConsumerState
from millstream.runtime.stats import DURATION_BOUNDS, Durations

if TYPE_CHECKING:
    from millstream.cache import Cache
    from millstream.observability.health import ConsumerReport, StoreReport
    from millstream.store.outbox import OutboxRelay

__all__ = ["Metrics", "Observed"]


class Observed(Protocol):
    """What a scrape reads: the app's consumers, its outbox relay and its caches."""

    @property
    def consumers(self) -> Mapping[str, ConsumerRuntime]: ...

    @property
    def relay(self) -> OutboxRelay | None: ...

    @property
    def caches(self) -> Mapping[str, Cache[Any]]: ...


class Metrics:
    """The service's metrics. Every app owns one (``ms.metrics``), observing itself.

    ``publish_link`` times publishes; ``observe`` names what a scrape reads
    the consumers' counters and handler durations from.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.published = Counter(
            "millstream_published_messages",
            "Messages published (confirmed by the broker), by topic.",
            ["topic"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "millstream_publish_duration_seconds",
            "Time from publish call to broker confirmation, per call (a batch is one call).",
            ["topic"],
            registry=self.registry,
        )
        self.loop_lag = Gauge(
            "millstream_event_loop_lag_seconds",
            "How late the event loop ran a timer at the last check.",
            registry=self.registry,
        )
        self.last_loop_lag = 0.0
        self._lags: dict[str, ConsumerReport] = {}
        self._store: StoreReport | None = None
        self._observed: Observed | None = None
        self.registry.register(_ConsumerCollector(self))

    def observe(self, app: Observed) -> None:
        """Read ``app``'s consumers, relay and caches at every scrape."""
        self._observed = app

    def remember(self, reports: Sequence[ConsumerReport], store: StoreReport | None = None) -> None:
        """Keep the latest lag and outbox readings for the next scrape."""
        self._lags = {report.consumer.name: report for report in reports}
        self._store = store

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def watch_loop(self, interval: float = 0.5) -> None:
        """Measure event-loop lag forever: how late a sleep of ``interval`` wakes."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(interval)
            self.last_loop_lag = max(0.0, loop.time() - started - interval)
            self.loop_lag.set(self.last_loop_lag)

    def publish_link(self, inner: Publish) -> Publish:
        """Times each publish call and counts the messages the broker confirmed."""

        async def timed(topic: str, messages: Sequence[OutgoingMessage]) -> None:
            started = time.perf_counter()
            await inner(topic, messages)
            self.publish_seconds.labels(topic).observe(time.perf_counter() - started)
            self.published.labels(topic).inc(len(messages))

        return timed

    def consumer_families(self) -> Iterator[Metric]:
        """Each consumer's counters, gauges and last lag reading."""
        ms = self._observed
        if ms is None:
            return
        families = _ConsumerFamilies()
        for consumer in ms.consumers.values():
            families.add(consumer, self._lags.get(consumer.name))
        yield from families.all()

    def state_families(self) -> Iterator[Metric]:
        """The outbox relay's counters and backlog, and the read caches' hits and misses."""
        ms = self._observed
        if ms is None:
            return
        relay = ms.relay
        if relay is not None:
            yield CounterMetricFamily(
                "millstream_outbox_published",
                "Outbox messages published and marked sent by this instance.",
                value=relay.stats.published,
            )
            yield CounterMetricFamily(
                "millstream_outbox_failed_batches",
                "Outbox batches the broker refused (each retried with backoff).",
                value=relay.stats.failed_batches,
            )
        if self._store is not None and self._store.outbox_pending is not None:
            yield GaugeMetricFamily(
                "millstream_outbox_pending",
                "Outbox messages not yet published, at the last health check.",
                value=self._store.outbox_pending,
            )
        if ms.caches:
            from millstream.cache import cache_families

            yield from cache_families(list(ms.caches.values()))


_LABELS = ["consumer", "topic", "group"]


class _ConsumerFamilies:
    """The families a scrape reads from the consumers, filled one consumer at a time."""

    def __init__(self) -> None:
        def counter(name: str, documentation: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, documentation, labels=_LABELS)

        self.consumed = counter("millstream_messages_consumed", "Deliveries received.")
        self.acked = counter("millstream_messages_acked", "Messages handled and acknowledged.")
        self.retried = counter("millstream_messages_retried", "Failures scheduled for retry.")
        self.dead = counter(
            "millstream_messages_dead_lettered", "Messages sent to the dead-letter queue."
        )
        self.reconnects = counter(
            "millstream_consumer_reconnects", "Times the consumer lost its connection."
        )
        self.taken_over = counter(
            "millstream_messages_taken_over",
            "Messages taken over from group members that stopped without releasing them.",
        )
        self.inflight = GaugeMetricFamily(
            "millstream_messages_inflight", "Messages fetched and not yet settled.", labels=_LABELS
        )
        self.concurrency = GaugeMetricFamily(
            "millstream_consumer_concurrency", "Workers of the consumer.", labels=_LABELS
        )
        self.state = GaugeMetricFamily(
            "millstream_consumer_state",
            "1 for the consumer's current state.",
            labels=[*_LABELS, "state"],
        )
        self.handler_seconds = HistogramMetricFamily(
            "millstream_handler_duration_seconds",
            "Time a handler took, by consumer, topic and outcome (ok or error).",
            labels=["consumer", "topic", "outcome"],
        )
        self.lag = GaugeMetricFamily(
            "millstream_consumer_lag",
            "Messages of the group not yet acknowledged, per partition (-1: whole topic).",
            labels=[*_LABELS, "partition"],
        )

    def add(self, consumer: ConsumerRuntime, report: ConsumerReport | None) -> None:
        values = [consumer.name, consumer.spec.topic, consumer.spec.group]
        stats = consumer.stats
        self.consumed.add_metric(values, stats.consumed)
        self.acked.add_metric(values, stats.acked)
        self.retried.add_metric(values, stats.retried)
        self.dead.add_metric(values, stats.dead)
        self.reconnects.add_metric(values, stats.reconnects)
        self.taken_over.add_metric(values, consumer.taken_over)
        self.inflight.add_metric(values, consumer.inflight)
        self.concurrency.add_metric(values, consumer.concurrency)
        times = stats.handler_times
        for outcome, durations in (("ok", times.ok), ("error", times.error)):
            self.handler_seconds.add_metric(
                [consumer.name, consumer.spec.topic, outcome],
                _cumulative(durations),
                durations.total,
            )
        for each in ConsumerState:
            self.state.add_metric([*values, each.value], 1.0 if consumer.state is each else 0.0)
        if report is not None and report.lag is not None:
            if report.lag.partitions:
                for partition, count in report.lag.partitions.items():
                    self.lag.add_metric([*values, str(partition)], count)
            else:
                self.lag.add_metric([*values, "-1"], report.lag.total)

    def all(self) -> tuple[Metric, ...]:
        """Every family: the counters, the gauges, then the handler durations."""
        return (
            self.consumed,
            self.acked,
            self.retried,
            self.dead,
            self.reconnects,
            self.taken_over,
            self.inflight,
            self.concurrency,
            self.state,
            self.lag,
            self.handler_seconds,
        )


# The `le` labels prometheus-client gives these bounds (Go float formatting).
_BUCKET_LABELS = (*(repr(float(bound)) for bound in DURATION_BOUNDS), "+Inf")


def _cumulative(durations: Durations) -> list[tuple[str, float]]:
    """Prometheus buckets (``le`` label, how many took at most that long) of ``durations``."""
    total = 0
    buckets = []
    for label, count in zip(_BUCKET_LABELS, durations.counts, strict=True):
        total += count
        buckets.append((label, float(total)))
    return buckets


class _ConsumerCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        with contextlib.suppress(RuntimeError):  # consumers changing under a scrape
            yield from self._metrics.consumer_families()
            yield from self._metrics.state_families()
