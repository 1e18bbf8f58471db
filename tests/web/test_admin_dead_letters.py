"""The admin API's dead-letter routes: listing, replaying and purging, rate caps, per group."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid

import httpx

from millstream import FatalError, Millstream
from millstream.brokers.memory.broker import MemoryHub
from tests.conftest import require_service
from tests.support import until
from tests.web import SECRET, bearer, memory_app, serving


class Healed:
    """Whether the consumer has been fixed, and when it handled what after that."""

    def __init__(self) -> None:
        self.now = False
        self.arrivals: list[float] = []


def dlq_app(**settings: object) -> tuple[Millstream, Healed, list[int]]:
    """A consumer that dead-letters every message until ``healed.now`` is true."""
    ms = memory_app(jwt_secret=SECRET, settle_interval=0.001, **settings)
    healed = Healed()
    handled: list[int] = []

    @ms.consumer("payments", name="payments")
    async def on_payment(event: dict[str, int]) -> None:
        if not healed.now:
            raise FatalError(f"payment {event['n']} refers to no order")
        healed.arrivals.append(time.monotonic())
        handled.append(event["n"])

    return ms, healed, handled


async def letters(http: httpx.AsyncClient, **params: int) -> dict[str, object]:
    response = await http.get("/admin/consumers/payments/dead-letters", params=params)
    assert response.status_code == 200
    page: dict[str, object] = response.json()
    return page


async def test_dead_letters_are_listed_newest_first_paged_with_reason_and_attempts() -> None:
    ms, _, _ = dlq_app()
    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        for n in range(5):
            await ms.publish("payments", {"n": n}, key=f"order-{n}", headers={"source": "test"})
            await until(lambda n=n: ms.consumers["payments"].stats.dead == n + 1)
        await ms.publish("payments", b"\xff\xfe not json")
        await until(lambda: ms.consumers["payments"].stats.dead == 6)

        page = await letters(http, limit=2)
        assert page["total"] == 6
        items = page["items"]
        assert isinstance(items, list) and len(items) == 2
        binary, newest = items
        assert binary["payload_encoding"] == "base64"
        assert base64.b64decode(binary["payload"]) == b"\xff\xfe not json"
        assert "does not validate" in binary["error"]
        assert newest["payload_encoding"] == "utf-8"
        assert newest["payload"] == '{"n":4}'
        assert newest["error"] == "FatalError: payment 4 refers to no order"
        assert newest["attempts"] == 1
        assert newest["key"] == "order-4"
        assert newest["headers"]["source"] == "test"
        assert newest["failed_at"] <= time.time()

        rest = await letters(http, limit=2, offset=2)
        assert [item["payload"] for item in rest["items"]] == ['{"n":3}', '{"n":2}']  # type: ignore[index, union-attr]
        beyond = await letters(http, offset=100)
        assert beyond == {"total": 6, "items": []}

        for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "ten"}):
            bad = await http.get("/admin/consumers/payments/dead-letters", params=params)
            assert bad.status_code == 422, params


async def test_letters_with_headers_that_are_not_strings_are_listed_as_json() -> None:
    require_service("Redis", "127.0.0.1", 6379)
    import redis.asyncio

    topic = f"test-{uuid.uuid4().hex[:12]}"
    ms = Millstream("redis://127.0.0.1:6379/0", jwt_secret=SECRET, poll_timeout=0.05)

    @ms.consumer(topic, name="payments", group="billing")
    async def on_payment(event: dict[str, int]) -> None: ...

    raw = redis.asyncio.Redis(host="127.0.0.1", port=6379)
    try:
        # Another producer's letter: what the broker holds, the API shows.
        headers = b'{"a":1,"b":{"c":[true,null]}}'
        letter = {"id": "m-1", "payload": b'{"n":1}', "headers": headers, "attempts": b"3"}
        await raw.xadd(f"{topic}:dlq:billing", letter)
        async with serving(ms.fastapi()) as http:
            http.headers.update(bearer())
            page = await letters(http)
        [item] = page["items"]  # type: ignore[misc]
        assert item["headers"] == {"a": 1, "b": {"c": [True, None]}}
        assert (item["message_id"], item["attempts"], item["payload"]) == ("m-1", 3, '{"n":1}')
    finally:
        keys = [key async for key in raw.scan_iter(match=f"{topic}*")]
        if keys:
            await raw.delete(*keys)
        await raw.aclose()


async def test_replay_all_dead_letters_back_into_the_group() -> None:
    ms, healed, handled = dlq_app()
    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        await ms.publish_batch("payments", [{"n": n} for n in range(5)])
        await until(lambda: ms.consumers["payments"].stats.dead == 5)
        healed.now = True
        response = await http.post("/admin/consumers/payments/dead-letters/replay", json={})
        assert response.json() == {"replayed": 5}
        await until(lambda: sorted(handled) == list(range(5)))
        assert (await letters(http))["total"] == 0
        again = await http.post("/admin/consumers/payments/dead-letters/replay", json={"ids": None})
        assert again.json() == {"replayed": 0}


async def test_replay_and_purge_chosen_letters() -> None:
    ms, healed, handled = dlq_app()
    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        await ms.publish_batch("payments", [{"n": n} for n in range(6)])
        await until(lambda: ms.consumers["payments"].stats.dead == 6)
        page = await letters(http)
        ids = {item["payload"]: item["id"] for item in page["items"]}  # type: ignore[union-attr]
        healed.now = True

        chosen = [ids['{"n":1}'], ids['{"n":4}'], "no-such-letter"]
        replayed = await http.post(
            "/admin/consumers/payments/dead-letters/replay", json={"ids": chosen}
        )
        assert replayed.json() == {"replayed": 2}
        await until(lambda: sorted(handled) == [1, 4])

        purged = await http.post(
            "/admin/consumers/payments/dead-letters/purge", json={"ids": [ids['{"n":0}']]}
        )
        assert purged.json() == {"purged": 1}
        left = await letters(http)
        assert [i["payload"] for i in left["items"]] == ['{"n":5}', '{"n":3}', '{"n":2}']  # type: ignore[union-attr]

        everything = await http.post("/admin/consumers/payments/dead-letters/purge", json={})
        assert everything.json() == {"purged": 3}
        assert (await letters(http))["total"] == 0
        await asyncio.sleep(0.1)
        assert sorted(handled) == [1, 4]  # purged letters are gone, not replayed


async def test_dead_letter_selection_bad_input_is_422(
    admin: tuple[Millstream, httpx.AsyncClient],
) -> None:
    _, http = admin
    for path in ("replay", "purge"):
        url = f"/admin/consumers/payments/dead-letters/{path}"
        assert (await http.post(url, json={"ids": "all"})).status_code == 422
        assert (await http.post(url, json={"ids": [1, {"x": 2}]})).status_code == 422
        malformed = await http.post(
            url, content=b"{ids:", headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 422


async def test_replay_is_capped_at_the_configured_rate() -> None:
    rate, total = 40, 100
    ms, healed, handled = dlq_app(dlq_replay_rate=rate)
    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        await ms.publish_batch("payments", [{"n": n} for n in range(total)])
        await until(lambda: ms.consumers["payments"].stats.dead == total)
        healed.now = True
        started = time.monotonic()
        response = await http.post("/admin/consumers/payments/dead-letters/replay", json={})
        elapsed = time.monotonic() - started
        assert response.json() == {"replayed": total}
        await until(lambda: len(handled) == total)

    # At most `rate` letters in any one second: 100 at 40/s takes at least 1.5 s.
    assert elapsed >= (total - rate) / rate * 0.95, f"replayed {total} in {elapsed:.2f}s"
    arrivals = sorted(healed.arrivals)
    for i, moment in enumerate(arrivals):
        within_a_second = [t for t in arrivals[i:] if t - moment < 0.95]
        assert len(within_a_second) <= rate, f"{len(within_a_second)} letters within a second"


async def test_replay_of_chosen_ids_is_capped_too() -> None:
    rate = 30
    ms, healed, _ = dlq_app(dlq_replay_rate=rate)
    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        await ms.publish_batch("payments", [{"n": n} for n in range(60)])
        await until(lambda: ms.consumers["payments"].stats.dead == 60)
        page = await letters(http, limit=1000)
        ids = [item["id"] for item in page["items"]]  # type: ignore[union-attr]
        healed.now = True
        started = time.monotonic()
        response = await http.post(
            "/admin/consumers/payments/dead-letters/replay", json={"ids": ids}
        )
        elapsed = time.monotonic() - started
        assert response.json() == {"replayed": 60}
        assert elapsed >= 0.95, f"replayed 60 at {rate}/s in {elapsed:.2f}s"


async def test_replaying_ids_that_are_not_there_answers_at_once() -> None:
    ms, _, _ = dlq_app(dlq_replay_rate=100)
    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        started = time.monotonic()
        response = await http.post(
            "/admin/consumers/payments/dead-letters/replay",
            json={"ids": [f"gone-{n}" for n in range(10_000)]},
        )
        elapsed = time.monotonic() - started

    assert response.json() == {"replayed": 0}
    assert elapsed < 3, f"paced {elapsed:.1f}s for letters it never replayed"


async def test_dead_letters_of_a_shared_hub_are_per_group() -> None:
    hub = MemoryHub()
    ms = memory_app(hub, jwt_secret=SECRET)

    @ms.consumer("payments", name="strict")
    async def strict(event: dict[str, int]) -> None:
        raise FatalError("never")

    @ms.consumer("payments", name="lenient")
    async def lenient(event: dict[str, int]) -> None: ...

    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        await ms.publish("payments", {"n": 1})
        await until(lambda: ms.consumers["strict"].stats.dead == 1)
        await until(lambda: ms.consumers["lenient"].stats.acked == 1)
        strict_page = await http.get("/admin/consumers/strict/dead-letters")
        lenient_page = await http.get("/admin/consumers/lenient/dead-letters")
        assert strict_page.json()["total"] == 1
        assert lenient_page.json() == {"total": 0, "items": []}
