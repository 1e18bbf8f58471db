"""The Prometheus queries under deploy/ ask for metrics and labels the service really exports:
a renamed metric would leave the autoscaler reading nothing, and scaling on nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from examples.orders import build
from tests.deploy.manifests import DEPLOY, K8S, documents
from tests.web import serving

QUERY_KEYS = {"query", "seriesQuery", "metricsQuery"}
# Labels Prometheus gives every target a ServiceMonitor scrapes, beside the service's own.
TARGET_LABELS = {"namespace", "service", "pod", "container", "endpoint", "job", "instance"}
METRIC = re.compile(r"\bmillstream_[a-z0-9_]+")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)\s*\"")


def queries() -> Iterator[tuple[str, str]]:
    """Every PromQL string in deploy/, under a key that holds one, with the file it is in."""

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict) and "metricsQuery" in node:
            # A prometheus-adapter rule: <<.Series>> in metricsQuery is what seriesQuery found.
            yield f"{node['seriesQuery']} {node['metricsQuery']}"
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in QUERY_KEYS and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in documents(path):
            for query in walk(doc):
                yield path.relative_to(DEPLOY).as_posix(), query


async def scrape(tmp_path: Path) -> dict[str, set[str]]:
    """The order service's /metrics: each sample name with the label names it has."""
    service = build(
        broker_url="memory://",
        store_url=f"sqlite:///{tmp_path}/state.db",
        jwt_secret="a-metrics-test-secret-0123456789abcdef",
        poll_timeout=0.05,
    )
    async with serving(service.app) as http:
        reply = await http.get("/metrics")
        assert reply.status_code == 200
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


async def test_every_metric_and_label_a_query_uses_is_in_a_scrape_of_the_service(
    tmp_path: Path,
) -> None:
    exported = await scrape(tmp_path)
    assert exported["millstream_consumer_lag"] >= {"consumer", "topic", "group", "partition"}
    found = list(queries())
    assert {file for file, _ in found} == {
        "k8s/components/keda/scaledobject.yaml",
        "k8s/components/hpa/prometheus-adapter-values.yaml",
    }
    for file, query in found:
        metrics = set(METRIC.findall(query))
        assert metrics, f"{file}: {query!r} names no millstream metric"
        missing = sorted(metrics - set(exported))
        assert not missing, f"{file}: {missing} are not in /metrics; it has {sorted(exported)}"
        labels = {
            label.strip()
            for grouping in GROUPING.findall(query)
            for label in grouping.split(",")
            if label.strip()
        } | set(MATCHER.findall(query))
        known = TARGET_LABELS.union(*(exported[metric] for metric in metrics))
        assert labels <= known, f"{file}: labels {sorted(labels - known)} are on no series"


def test_the_hpa_asks_for_the_metric_the_adapter_serves() -> None:
    [hpa] = documents(K8S / "components" / "hpa" / "hpa.yaml")
    [values] = documents(K8S / "components" / "hpa" / "prometheus-adapter-values.yaml")
    served = {rule["name"]["as"] for rule in values["rules"]["external"]}
    asked = {metric["external"]["metric"]["name"] for metric in hpa["spec"]["metrics"]}
    assert asked == served
