"""The admin API's consumer routes: tokens, state and counters, pause, resume, concurrency."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from millstream import FatalError, Millstream, Retry
from millstream.runtime import ConsumerState
from tests.support import until
from tests.web import SECRET, bearer, memory_app, serving


async def test_every_admin_route_needs_a_token() -> None:
    ms = memory_app(jwt_secret=SECRET)

    @ms.consumer("payments", name="payments")
    async def on_payment(event: dict[str, int]) -> None: ...

    calls = [
        ("GET", "/admin/consumers", None),
        ("POST", "/admin/consumers/payments/pause", None),
        ("POST", "/admin/consumers/payments/resume", None),
        ("PUT", "/admin/consumers/payments/concurrency", {"concurrency": 3}),
        ("GET", "/admin/consumers/payments/dead-letters", None),
        ("GET", "/admin/consumers/payments/dead-letters/reasons", None),
        ("GET", "/admin/consumers/payments/dead-letters/some-letter", None),
        ("POST", "/admin/consumers/payments/dead-letters/replay", {}),
        ("POST", "/admin/consumers/payments/dead-letters/purge", {}),
        ("GET", "/admin/consumers/history", None),
        ("GET", "/admin/service", None),
    ]
    async with serving(ms.fastapi()) as http:
        for method, path, body in calls:
            response = await http.request(method, path, json=body)
            assert response.status_code == 401, (method, path)
        assert ms.consumers["payments"].state is ConsumerState.RUNNING


async def test_list_consumers_with_state_and_counters(
    admin: tuple[Millstream, httpx.AsyncClient],
) -> None:
    ms, http = admin
    await ms.publish_batch("payments", [{"n": i} for i in range(3)])
    await until(lambda: ms.consumers["payments"].stats.acked == 3)
    await until(lambda: ms.consumers["payments"].inflight == 0)  # settled, not only handled
    response = await http.get("/admin/consumers")
    assert response.status_code == 200
    assert response.json() == [
        {
            "name": "payments",
            "topic": "payments",
            "group": "payments",
            "state": "RUNNING",
            "concurrency": 2,
            "inflight": 0,
            "consumed": 3,
            "acked": 3,
            "retried": 0,
            "dead": 0,
            "reconnects": 0,
            "lag": 0,
            "dead_letters": 0,
            "last_error": None,
        }
    ]


async def test_pause_and_resume_with_409_for_changes_that_make_no_sense() -> None:
    ms = memory_app(jwt_secret=SECRET)
    handled: list[int] = []

    @ms.consumer("payments", name="payments")
    async def on_payment(event: dict[str, int]) -> None:
        handled.append(event["n"])

    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        paused = await http.post("/admin/consumers/payments/pause")
        assert (paused.status_code, paused.json()["state"]) == (200, "PAUSED")
        again = await http.post("/admin/consumers/payments/pause")
        assert again.status_code == 409
        assert again.json() == {"detail": "consumer 'payments' is paused"}

        await asyncio.sleep(0.1)  # a fetch in progress when paused returns empty
        await ms.publish_batch("payments", [{"n": i} for i in range(5)])
        await asyncio.sleep(0.2)
        assert handled == []

        resumed = await http.post("/admin/consumers/payments/resume")
        assert (resumed.status_code, resumed.json()["state"]) == (200, "RUNNING")
        await until(lambda: sorted(handled) == list(range(5)))
        again = await http.post("/admin/consumers/payments/resume")
        assert again.status_code == 409
        assert again.json() == {"detail": "consumer 'payments' is not paused"}


async def test_changes_to_a_stopped_or_failed_consumer_are_409(
    admin: tuple[Millstream, httpx.AsyncClient],
) -> None:
    ms, http = admin
    consumer = ms.consumers["payments"]
    await consumer.stop()
    for path in ("pause", "concurrency"):
        method = "PUT" if path == "concurrency" else "POST"
        body = {"concurrency": 4} if path == "concurrency" else None
        response = await http.request(method, f"/admin/consumers/payments/{path}", json=body)
        assert response.status_code == 409, path
        assert response.json()["detail"] == "consumer 'payments' is STOPPED; it cannot change now"
    assert consumer.concurrency == 2
    assert not consumer.paused

    consumer.state = ConsumerState.FAILED
    response = await http.post("/admin/consumers/payments/pause")
    assert response.status_code == 409
    assert "FAILED" in response.json()["detail"]


async def test_unknown_consumer_is_404_naming_the_known_ones(
    admin: tuple[Millstream, httpx.AsyncClient],
) -> None:
    _, http = admin
    calls = [
        ("POST", "/admin/consumers/refunds/pause", None),
        ("POST", "/admin/consumers/refunds/resume", None),
        ("PUT", "/admin/consumers/refunds/concurrency", {"concurrency": 2}),
        ("GET", "/admin/consumers/refunds/dead-letters", None),
        ("GET", "/admin/consumers/refunds/dead-letters/reasons", None),
        ("GET", "/admin/consumers/refunds/dead-letters/some-letter", None),
        ("POST", "/admin/consumers/refunds/dead-letters/replay", {}),
        ("POST", "/admin/consumers/refunds/dead-letters/purge", {}),
    ]
    for method, path, body in calls:
        response = await http.request(method, path, json=body)
        assert response.status_code == 404, (method, path)
        assert response.json() == {"detail": "no consumer named 'refunds'; known: payments"}


async def test_concurrency_change_takes_effect_while_running() -> None:
    ms = memory_app(jwt_secret=SECRET)
    active = 0
    peak = 0

    @ms.consumer("payments", name="payments", concurrency=1, max_inflight=64)
    async def on_payment(event: dict[str, int]) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.005)
        active -= 1

    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        consumer = ms.consumers["payments"]
        await ms.publish_batch("payments", [{"n": i} for i in range(400)])
        await until(lambda: consumer.stats.acked >= 20)
        assert peak == 1
        response = await http.put("/admin/consumers/payments/concurrency", json={"concurrency": 8})
        assert response.status_code == 200
        assert response.json()["concurrency"] == 8
        peak = 0
        await until(lambda: peak == 8, within=5)
        await until(lambda: consumer.stats.acked == 400)
        listed = (await http.get("/admin/consumers")).json()[0]
        assert listed["concurrency"] == 8


async def test_concurrency_bad_input_is_422_with_the_field_errors(
    admin: tuple[Millstream, httpx.AsyncClient],
) -> None:
    ms, http = admin
    path = "/admin/consumers/payments/concurrency"

    malformed = await http.put(
        path, content=b'{"concurrency": ', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["type"] == "json_invalid"

    wrong_type = await http.put(path, json={"concurrency": "many"})
    assert wrong_type.status_code == 422
    (error,) = wrong_type.json()["detail"]
    assert (error["loc"], error["type"]) == (["body", "concurrency"], "int_parsing")

    for bad in (0, -3, 5000):
        response = await http.put(path, json={"concurrency": bad})
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"] == ["body", "concurrency"]

    missing = await http.put(path, json={})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["type"] == "missing"

    no_body = await http.put(path)
    assert no_body.status_code == 422

    not_an_object = await http.put(path, json=[8])
    assert not_an_object.status_code == 422

    not_utf8 = await http.put(
        path, content=b'{"concurrency": "\xff"}', headers={"content-type": "application/json"}
    )
    assert not_utf8.status_code == 422
    (error,) = not_utf8.json()["detail"]
    assert (error["type"], error["loc"]) == ("json_invalid", ["body"])
    assert "not UTF-8" in error["ctx"]["error"]
    assert ms.consumers["payments"].concurrency == 2


async def test_operator_actions_are_logged_with_the_subject_of_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ms = memory_app(jwt_secret=SECRET)

    @ms.consumer("payments", name="payments")
    async def on_payment(event: dict[str, int]) -> None:
        raise FatalError("no such order")

    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer(sub="alice@ops"))
        await ms.publish_batch("payments", [{"n": n} for n in range(3)])
        await until(lambda: ms.consumers["payments"].stats.dead == 3)
        caplog.clear()
        base = "/admin/consumers/payments"
        assert (await http.post(f"{base}/pause")).status_code == 200
        assert (await http.post(f"{base}/resume")).status_code == 200
        assert (await http.put(f"{base}/concurrency", json={"concurrency": 3})).status_code == 200
        reason = {"reason": "FatalError"}
        assert (await http.post(f"{base}/dead-letters/replay", json=reason)).status_code == 200
        await until(lambda: ms.consumers["payments"].stats.dead == 6)
        assert (await http.post(f"{base}/dead-letters/purge", json={})).status_code == 200

    logged = [r.getMessage() for r in caplog.records if r.name == "millstream.web.admin"]
    assert all(
        r.levelno == logging.INFO for r in caplog.records if r.name == "millstream.web.admin"
    )
    assert logged == [
        "operator 'alice@ops' paused consumer 'payments'",
        "operator 'alice@ops' resumed consumer 'payments'",
        "operator 'alice@ops' set consumer 'payments' concurrency 1 -> 3",
        "operator 'alice@ops' replayed 3 dead letter(s) of 'payments': reason 'FatalError'",
        "operator 'alice@ops' purged 3 dead letter(s) of 'payments': all",
    ]


async def test_the_consumers_list_counts_dead_letters_again_only_when_they_may_have_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counting reads a whole topic on Kafka: the list, polled by the console, reuses a
    count until this process buries another letter, a replay or purge, or 15 seconds."""
    ms = memory_app(jwt_secret=SECRET)

    @ms.consumer("payments", retry=Retry(attempts=1))
    async def on_payment(event: dict[str, int]) -> None:
        raise FatalError("refused")

    counts = 0
    from millstream.brokers.memory.dead_letters import MemoryDeadLetters

    original = MemoryDeadLetters.count

    async def count(self: MemoryDeadLetters) -> int:
        nonlocal counts
        counts += 1
        return await original(self)

    monkeypatch.setattr(MemoryDeadLetters, "count", count)

    async def listed() -> int:
        reply = await http.get("/admin/consumers", headers=bearer())
        return int(reply.json()[0]["dead_letters"])

    async with serving(ms.fastapi()) as http:
        assert (await listed(), await listed(), counts) == (0, 0, 1)
        await ms.publish("payments", {"n": 1})
        await until(lambda: ms.consumers["on_payment"].stats.dead == 1)
        assert (await listed(), await listed(), counts) == (1, 1, 2)
        purge = "/admin/consumers/on_payment/dead-letters/purge"
        assert (await http.post(purge, json={}, headers=bearer())).status_code == 200
        assert (await listed(), counts) == (0, 3)
