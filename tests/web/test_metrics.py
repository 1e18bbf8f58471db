"""``/metrics``: what Prometheus scrapes, read back with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families

from millstream import FatalError, Message, Millstream, RetryPolicy
from millstream.brokers.base import Lag
from millstream.brokers.memory.broker import MemoryBroker, MemoryHub, MemorySubscription
from millstream.message import OutgoingMessage
from tests.support import until
from tests.web import memory_app, serving


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape by (name, labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    scrape: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    key = (name, frozenset(labels.items()))
    assert key in scrape, (
        f"no sample {name}{labels}; have {sorted(k for k, _ in scrape if name in k)}"
    )
    return scrape[key]


async def test_consumer_counters_histograms_and_publish_metrics() -> None:
    ms = memory_app(settle_interval=0.001)
    attempts: dict[int, int] = {}

    @ms.consumer("payments", retry=RetryPolicy(attempts=3, backoff=0.01, jitter=0))
    async def on_payment(event: dict[str, int], msg: Message) -> None:
        n = event["n"]
        attempts[n] = msg.attempt
        if n % 5 == 0:
            raise FatalError(f"payment {n} refers to no order")
        if n % 5 == 1 and msg.attempt == 1:
            raise RuntimeError("payment service timed out")

    app = ms.fastapi()
    async with serving(app) as http:
        await ms.publish_batch("payments", [{"n": n} for n in range(10)])
        consumer = ms.consumers["on_payment"]
        await until(lambda: consumer.stats.acked + consumer.stats.dead == 10)
        await until(lambda: consumer.inflight == 0)
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        scrape = samples(response.text)

    labels = {"consumer": "on_payment", "topic": "payments", "group": "on_payment"}
    assert value(scrape, "millstream_messages_consumed_total", **labels) == 12
    assert value(scrape, "millstream_messages_acked_total", **labels) == 8
    assert value(scrape, "millstream_messages_retried_total", **labels) == 2
    assert value(scrape, "millstream_messages_dead_lettered_total", **labels) == 2
    assert value(scrape, "millstream_messages_inflight", **labels) == 0
    assert value(scrape, "millstream_consumer_concurrency", **labels) == 1
    assert value(scrape, "millstream_consumer_state", **labels, state="RUNNING") == 1
    assert value(scrape, "millstream_consumer_state", **labels, state="FAILED") == 0
    assert value(scrape, "millstream_consumer_lag", **labels, partition="-1") == 0

    handler = {"consumer": "on_payment", "topic": "payments"}
    assert value(scrape, "millstream_handler_duration_seconds_count", **handler, outcome="ok") == 8
    errors = value(scrape, "millstream_handler_duration_seconds_count", **handler, outcome="error")
    assert errors == 4
    bucket = value(
        scrape, "millstream_handler_duration_seconds_bucket", **handler, outcome="ok", le="+Inf"
    )
    assert bucket == 8

    assert value(scrape, "millstream_published_messages_total", topic="payments") == 10
    assert value(scrape, "millstream_publish_duration_seconds_count", topic="payments") == 1
    assert value(scrape, "millstream_event_loop_lag_seconds") >= 0


async def test_inflight_and_lag_while_handlers_are_busy() -> None:
    ms = memory_app()
    gate = asyncio.Event()
    started = 0

    @ms.consumer("refunds", concurrency=3)
    async def on_refund(event: dict[str, int]) -> None:
        nonlocal started
        started += 1
        await gate.wait()

    app = ms.fastapi()
    async with serving(app) as http:
        await ms.publish_batch("refunds", [{"n": n} for n in range(7)])
        await until(lambda: started == 3)
        scrape = samples((await http.get("/metrics")).text)
        labels = {"consumer": "on_refund", "topic": "refunds", "group": "on_refund"}
        # Held: the three running and one ahead per worker (their pace is unknown yet).
        assert value(scrape, "millstream_messages_inflight", **labels) == 6
        assert value(scrape, "millstream_consumer_lag", **labels, partition="-1") == 7
        assert value(scrape, "millstream_consumer_concurrency", **labels) == 3
        ms.consumers["on_refund"].pause()
        scrape = samples((await http.get("/metrics")).text)
        assert value(scrape, "millstream_consumer_state", **labels, state="PAUSED") == 1
        assert value(scrape, "millstream_consumer_state", **labels, state="RUNNING") == 0
        gate.set()


class PartitionedBroker(MemoryBroker):
    """A memory broker whose subscriptions report lag per partition, as Kafka's do."""

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> MemorySubscription:
        subscription = await super().subscribe(topic, group, prefetch=prefetch, member=member)

        async def lag() -> Lag:
            return Lag(total=5, partitions={0: 2, 3: 3})

        subscription.lag = lag  # type: ignore[method-assign]
        return subscription


async def test_lag_is_reported_per_partition() -> None:
    ms = Millstream(broker=PartitionedBroker(MemoryHub()), poll_timeout=0.05)

    @ms.consumer("orders")
    async def on_order(event: dict[str, int]) -> None: ...

    app = ms.fastapi()
    async with serving(app) as http:
        scrape = samples((await http.get("/metrics")).text)
        labels = {"consumer": "on_order", "topic": "orders", "group": "on_order"}
        assert value(scrape, "millstream_consumer_lag", **labels, partition="0") == 2
        assert value(scrape, "millstream_consumer_lag", **labels, partition="3") == 3
        assert (
            "millstream_consumer_lag",
            frozenset({**labels, "partition": "-1"}.items()),
        ) not in scrape
        details = (await http.get("/actuator/health")).json()["components"]["consumers"]
        on_order = details["components"]["on_order"]["details"]
        assert (on_order["lag"], on_order["partitionCount"]) == (5, 2)
        assert on_order["partitions"] == {"0": 2, "3": 3}


async def test_http_requests_by_route_template_and_status_with_latency() -> None:
    ms = memory_app()

    @ms.consumer("payments")
    async def on_payment(event: dict[str, int]) -> None: ...

    app = ms.fastapi()

    @app.get("/api/v1/orders/{order_id}")
    async def order(order_id: str) -> dict[str, str]:
        await asyncio.sleep(0.02)
        return {"id": order_id}

    async with serving(app) as http:
        for order_id in ("a", "b", "c"):
            assert (await http.get(f"/api/v1/orders/{order_id}")).status_code == 200
        assert (await http.get("/admin/consumers")).status_code == 401
        assert (await http.get("/no/such/route")).status_code == 404
        scrape = samples((await http.get("/metrics")).text)

    route = "/api/v1/orders/{order_id}"
    assert (
        value(scrape, "millstream_http_requests_total", handler=route, method="GET", status="200")
        == 3
    )
    assert (
        value(
            scrape,
            "millstream_http_requests_total",
            handler="/admin/consumers",
            method="GET",
            status="401",
        )
        == 1
    )
    # Unknown paths share one series, so a scanner cannot blow up the series count.
    assert (
        value(scrape, "millstream_http_requests_total", handler="none", method="GET", status="404")
        == 1
    )
    assert (
        value(scrape, "millstream_http_request_duration_seconds_count", handler=route, method="GET")
        == 3
    )
    took = value(
        scrape, "millstream_http_request_duration_seconds_sum", handler=route, method="GET"
    )
    assert took >= 0.06
    assert not any(
        name.startswith("millstream_http") and ("handler", "/metrics") in labels
        for name, labels in scrape
    )


async def test_event_loop_lag_gauge_follows_a_blocked_loop() -> None:
    app = memory_app().fastapi()
    async with serving(app) as http:
        await asyncio.sleep(0.05)
        time.sleep(0.8)  # noqa: ASYNC251 - the blocked loop is what is measured
        await asyncio.sleep(0.05)
        scrape = samples((await http.get("/metrics")).text)
        assert value(scrape, "millstream_event_loop_lag_seconds") >= 0.25


async def test_two_apps_in_one_process_keep_separate_metrics() -> None:
    first, second = memory_app(), memory_app()
    for ms in (first, second):

        @ms.consumer("t")
        async def handle(event: dict[str, int]) -> None: ...

    app_one, app_two = first.fastapi(), second.fastapi()
    async with serving(app_one) as one, serving(app_two) as two:
        await first.publish("t", {"n": 1})
        await until(lambda: first.consumers["handle"].stats.acked == 1)
        labels = {"consumer": "handle", "topic": "t", "group": "handle"}
        assert (
            value(
                samples((await one.get("/metrics")).text),
                "millstream_messages_acked_total",
                **labels,
            )
            == 1
        )
        assert (
            value(
                samples((await two.get("/metrics")).text),
                "millstream_messages_acked_total",
                **labels,
            )
            == 0
        )


async def test_messages_taken_over_from_a_crashed_member_are_counted() -> None:
    hub = MemoryHub(lease=0.2)
    crashed = MemoryBroker(hub)
    await crashed.connect()
    await crashed.publish("t", [OutgoingMessage(b'{"n": %d}' % i) for i in range(4)])
    assert len(await (await crashed.subscribe("t", "handle", prefetch=4)).fetch(4, 1)) == 4
    crashed.abandon()  # the process died holding all four
    ms = memory_app(hub)
    handled: list[int] = []

    @ms.consumer("t")
    async def handle(event: dict[str, int]) -> None:
        handled.append(event["n"])

    async with serving(ms.fastapi()) as http:
        await until(lambda: len(handled) == 4)
        scrape = samples((await http.get("/metrics")).text)

    labels = {"consumer": "handle", "topic": "t", "group": "handle"}
    assert value(scrape, "millstream_messages_taken_over_total", **labels) == 4
