"""What the console reads besides dead letters: throughput history, last errors, the
service view, and the console's own files."""

from __future__ import annotations

import time
from pathlib import Path

from millstream import FatalError, Millstream, __version__
from millstream.web.console import ASSETS
from millstream.web.history import ThroughputHistory
from tests.support import until
from tests.web import SECRET, GatedBroker, bearer, memory_app, serving


async def test_history_counts_what_each_consumer_did_per_bucket() -> None:
    ms = memory_app(jwt_secret=SECRET, settle_interval=0.001)
    ms.web.history = ThroughputHistory(bucket=0.1, window=1.0)

    @ms.consumer("payments", name="payments")
    async def on_payment(event: dict[str, int]) -> None:
        if event["n"] % 2:
            raise FatalError("odd")

    @ms.consumer("refunds", name="refunds")
    async def on_refund(event: dict[str, int]) -> None: ...

    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        await ms.publish_batch("payments", [{"n": n} for n in range(10)])
        await until(lambda: ms.consumers["payments"].stats.dead == 5)
        await until(lambda: len(ms.web.history.samples) >= 3, within=5)
        first = (await http.get("/admin/consumers/history")).json()
        assert (first["bucket_seconds"], first["window_seconds"]) == (0.1, 1.0)
        at = first["at"]
        assert at == sorted(at) and 3 <= len(at) <= 10
        payments = first["consumers"]["payments"]
        assert {len(series) for series in payments.values()} == {len(at)}
        assert (sum(payments["consumed"]), sum(payments["acked"])) == (10, 5)
        assert (sum(payments["dead"]), sum(payments["retried"])) == (5, 0)
        assert sum(first["consumers"]["refunds"]["consumed"]) == 0

        await until(lambda: len(ms.web.history.samples) == 10, within=5)
        newer = (await http.get("/admin/consumers/history", params={"since": at[-1]})).json()
        assert newer["at"] and all(moment > at[-1] for moment in newer["at"])
        assert len(newer["consumers"]["payments"]["acked"]) == len(newer["at"])
        bad = await http.get("/admin/consumers/history", params={"since": "yesterday"})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["query", "since"]


async def test_a_consumer_shows_its_last_handler_error_with_type_and_time() -> None:
    ms = memory_app(jwt_secret=SECRET)

    @ms.consumer("payments", name="payments")
    async def on_payment(event: dict[str, int]) -> None:
        raise LookupError(f"no order {event['n']}")

    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        [quiet] = (await http.get("/admin/consumers")).json()
        assert quiet["last_error"] is None
        before = time.time()
        await ms.publish("payments", {"n": 7})
        await until(lambda: ms.consumers["payments"].stats.retried >= 1)
        [view] = (await http.get("/admin/consumers")).json()
    error = view["last_error"]
    assert (error["type"], error["message"], error["source"]) == (
        "LookupError",
        "no order 7",
        "handler",
    )
    assert before <= error["at"] <= time.time()
    assert view["state"] == "RUNNING"


async def test_a_consumer_shows_a_lost_connection_as_its_last_error() -> None:
    broker = GatedBroker()
    ms = Millstream(broker=broker, jwt_secret=SECRET, reconnect_backoff=0.05)

    @ms.consumer("payments", name="payments")
    async def on_payment(event: dict[str, int]) -> None: ...

    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        await until(lambda: ms.consumers["payments"].stats.reconnects >= 1)
        [view] = (await http.get("/admin/consumers")).json()
    error = view["last_error"]
    assert (error["type"], error["source"]) == ("BrokerUnavailable", "session")
    assert error["message"] == "connection refused (test)"


async def test_the_service_view_tells_version_broker_caches_and_outbox(tmp_path: Path) -> None:
    ms = memory_app(jwt_secret=SECRET, store_url=f"sqlite:///{tmp_path}/state.db")
    cache = ms.cache("orders", ttl=30.0)
    ms.store  # noqa: B018 - used before start: the store (and its outbox relay) opens with the app

    async def load() -> str:
        return "an order"

    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        await cache.get_or_load("o-1", load)
        await cache.get_or_load("o-1", load)
        await cache.get_or_load("o-1", load)
        await cache.get_or_load("o-2", load)
        about = (await http.get("/admin/service")).json()
    assert about["version"] == __version__
    assert (about["broker"], about["started"], about["draining"]) == ("memory://", True, False)
    assert about["event_loop_lag_ms"] >= 0
    assert about["caches"] == [
        {"name": "orders", "hits": 2, "misses": 2, "hit_rate": 0.5, "entries": 2}
    ]
    assert about["outbox"] == {"published": 0, "failed_batches": 0, "last_error": None}


async def test_the_console_needs_no_token_and_runs_only_its_own_files() -> None:
    ms = memory_app(jwt_secret=SECRET)
    async with serving(ms.fastapi()) as http:
        page = await http.get("/console")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy
        assert page.headers["referrer-policy"] == "no-referrer"
        weight = len(page.content)
        for name, media_type in ASSETS.items():
            if name == "index.html":
                continue
            assert f'"console/{name}"' in page.text
            asset = await http.get(f"/console/{name}")
            assert (asset.status_code, asset.headers["content-type"]) == (200, media_type)
            weight += len(asset.content)
        assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
        schema = (await http.get("/openapi.json")).json()
        assert not [path for path in schema["paths"] if path.startswith("/console")]
    assert weight < 200_000
