"""Handler durations kept as plain numbers export exactly as prometheus-client's own histogram."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from millstream import Millstream
from millstream.runtime.stats import DURATION_BOUNDS

NAME = "millstream_handler_duration_seconds"


def exported(text: str) -> dict[str, float]:
    """The ``ok`` series of the handler histogram: each bucket by ``le``, count and sum."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for each in family.samples:
            if each.labels.get("outcome", "ok") != "ok":
                continue
            if each.name == f"{NAME}_bucket":
                found[each.labels["le"]] = each.value
            elif each.name in (f"{NAME}_count", f"{NAME}_sum"):
                found[each.name] = round(each.value, 9)
    return found


async def test_durations_export_the_buckets_a_prometheus_histogram_would() -> None:
    # Zero, on a bound, just above one, and beyond the last.
    seconds = [0.0, 0.0005, 0.00051, 0.003, 0.1, 0.1000001, 2.5, 10.0, 11.0, 300.0]
    reference = CollectorRegistry()
    histogram = Histogram(NAME, "", buckets=DURATION_BOUNDS, registry=reference)
    for each in seconds:
        histogram.observe(each)
    ms = Millstream("memory://")

    @ms.consumer("orders")
    async def handle(order: dict[str, int]) -> None:
        pass

    async with ms:
        durations = ms.consumers["handle"].stats.handler_times.ok
        for each in seconds:
            durations.observe(each)
        ours = exported(ms.metrics.render().decode())

    expected = exported(generate_latest(reference).decode())
    assert len(expected) == len(DURATION_BOUNDS) + 3  # every bound, +Inf, count and sum
    assert ours == expected
