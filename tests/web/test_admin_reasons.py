"""The admin API's dead letters by reason: grouping, one letter's detail, replay and purge
of a reason, and the bound on what a scan reads."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import orjson
import pytest

from millstream import FatalError, Millstream, Retry
from millstream.brokers.memory.broker import MemoryHub
from millstream.message import OutgoingMessage
from millstream.web.admin import letters as letters_module
from tests.support import until
from tests.web import SECRET, bearer, memory_app, serving

BASE = "/admin/consumers/payments/dead-letters"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Switch:
    healed = False


def failing_app(hub: MemoryHub | None = None) -> tuple[Millstream, Switch, list[int]]:
    """Even payments fail fatally ("FatalError"); odd ones exhaust their single attempt
    ("attempts exhausted: ValueError"); once healed, all are handled."""
    ms = memory_app(hub, jwt_secret=SECRET, settle_interval=0.001)
    switch = Switch()
    handled: list[int] = []

    @ms.consumer("payments", name="payments", retry=Retry(attempts=1))
    async def on_payment(event: dict[str, Any]) -> None:
        n = event["n"]
        if not switch.healed:
            if n % 2 == 0:
                raise FatalError(f"payment {n} refers to no order")
            raise ValueError(f"card {n} declined")
        handled.append(n)

    return ms, switch, handled


async def dead(ms: Millstream, count: int) -> None:
    await until(lambda: ms.consumers["payments"].stats.dead == count)


async def test_letters_are_grouped_by_reason_with_counts_and_times() -> None:
    ms, _, _ = failing_app()
    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        started = time.time()
        await ms.publish_batch("payments", [{"n": n} for n in range(7)])
        await dead(ms, 7)

        page = (await http.get(f"{BASE}/reasons")).json()
        assert (page["total"], page["scanned"], page["bound"]) == (7, 7, 10_000)
        fatal, exhausted = page["reasons"]
        assert (fatal["reason"], fatal["count"]) == ("FatalError", 4)
        assert (exhausted["reason"], exhausted["count"]) == ("attempts exhausted: ValueError", 3)
        assert exhausted["example"].startswith("attempts exhausted (1 of 1): ValueError: card ")
        for group in (fatal, exhausted):
            assert started <= group["first_failed_at"] <= group["last_failed_at"] <= time.time()

        listed = (await http.get(BASE, params={"reason": "FatalError", "limit": 3})).json()
        assert listed["total"] == 4 and len(listed["items"]) == 3
        assert {item["reason"] for item in listed["items"]} == {"FatalError"}
        rest = (await http.get(BASE, params={"reason": "FatalError", "offset": 3})).json()
        assert len(rest["items"]) == 1
        nothing = (await http.get(BASE, params={"reason": "no such reason"})).json()
        assert nothing == {"total": 0, "items": []}
        empty = await http.get(BASE, params={"reason": ""})
        assert empty.status_code == 422


async def test_a_letter_shows_pretty_json_headers_attempts_and_its_trace() -> None:
    ms, _, _ = failing_app()
    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        payload = {"n": 2, "order": {"id": "o-1", "lines": [1, 2]}}
        headers = {"traceparent": TRACEPARENT, "source": "checkout"}
        # Straight to the broker: what another producer wrote, trace header and all.
        await ms.broker.publish(
            "payments", [OutgoingMessage(orjson.dumps(payload), key="o-1", headers=headers)]
        )
        await ms.broker.publish("payments", [OutgoingMessage(b"\xff\x00 not text", key="b")])
        await dead(ms, 2)
        items = (await http.get(BASE)).json()["items"]
        binary_id, json_id = items[0]["id"], items[1]["id"]

        letter = (await http.get(f"{BASE}/{json_id}")).json()
        assert letter["payload_json"] == orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode()
        assert '\n  "order": {' in letter["payload_json"]
        assert letter["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert letter["headers"] == headers
        assert (letter["attempts"], letter["key"], letter["reason"]) == (1, "o-1", "FatalError")
        assert letter["error"] == "FatalError: payment 2 refers to no order"

        binary = (await http.get(f"{BASE}/{binary_id}")).json()
        assert (binary["payload_json"], binary["trace_id"]) == (None, None)
        assert binary["payload_encoding"] == "base64"
        assert base64.b64decode(binary["payload"]) == b"\xff\x00 not text"

        missing = await http.get(f"{BASE}/no-such-letter")
        assert missing.status_code == 404
        assert missing.json()["detail"] == (
            "no dead letter 'no-such-letter' among the newest 10000 of consumer 'payments'; "
            "it may have been replayed or purged"
        )


async def test_replaying_a_reason_replays_only_its_letters_into_this_group_only() -> None:
    hub = MemoryHub()
    ms, switch, handled = failing_app(hub)
    other: list[int] = []

    @ms.consumer("payments", name="audit")
    async def audit(event: dict[str, int]) -> None:
        other.append(event["n"])

    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        await ms.publish_batch("payments", [{"n": n} for n in range(4)])  # 0, 2 fatal
        await dead(ms, 4)
        [fatal] = [
            r
            for r in (await http.get(f"{BASE}/reasons")).json()["reasons"]
            if r["count"] and r["reason"] == "FatalError"
        ]
        await ms.publish_batch("payments", [{"n": n} for n in (10, 12)])  # later, same reason
        await dead(ms, 6)
        switch.healed = True

        selection = {"reason": "FatalError", "failed_until": fatal["last_failed_at"]}
        replayed = await http.post(f"{BASE}/replay", json=selection)
        assert replayed.json() == {"replayed": 2}
        await until(lambda: sorted(handled) == [0, 2])
        reasons = {
            r["reason"]: r["count"] for r in (await http.get(f"{BASE}/reasons")).json()["reasons"]
        }
        assert reasons == {"FatalError": 2, "attempts exhausted: ValueError": 2}
        assert sorted(other) == [0, 1, 2, 3, 10, 12]  # the other group saw each once

        everything = await http.post(f"{BASE}/replay", json={"reason": "FatalError"})
        assert everything.json() == {"replayed": 2}
        await until(lambda: sorted(handled) == [0, 2, 10, 12])
        again = await http.post(f"{BASE}/replay", json={"reason": "FatalError"})
        assert again.json() == {"replayed": 0}


async def test_purging_a_reason_leaves_the_others() -> None:
    ms, _, handled = failing_app()
    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        await ms.publish_batch("payments", [{"n": n} for n in range(5)])
        await dead(ms, 5)
        purged = await http.post(f"{BASE}/purge", json={"reason": "attempts exhausted: ValueError"})
        assert purged.json() == {"purged": 2}
        left = (await http.get(f"{BASE}/reasons")).json()
        assert [(r["reason"], r["count"]) for r in left["reasons"]] == [("FatalError", 3)]
        assert left["total"] == 3
        assert handled == []


async def test_a_selection_names_ids_or_a_reason_and_says_so(
    admin: tuple[Millstream, httpx.AsyncClient],
) -> None:
    _, http = admin
    for verb in ("replay", "purge"):
        both = await http.post(f"{BASE}/{verb}", json={"ids": ["a"], "reason": "FatalError"})
        assert both.status_code == 422
        assert "give ids or reason, not both" in both.json()["detail"][0]["msg"]
        lonely = await http.post(f"{BASE}/{verb}", json={"failed_until": 1.0})
        assert lonely.status_code == 422
        assert "failed_until applies to a reason" in lonely.json()["detail"][0]["msg"]
        blank = await http.post(f"{BASE}/{verb}", json={"reason": ""})
        assert blank.status_code == 422
        assert blank.json()["detail"][0]["loc"] == ["body", "reason"]
        not_a_time = await http.post(f"{BASE}/{verb}", json={"reason": "x", "failed_until": "x"})
        assert not_a_time.status_code == 422


async def test_a_reasons_scan_reads_at_most_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(letters_module, "SCAN_BOUND", 5)
    monkeypatch.setattr(letters_module, "_PAGE", 2)
    ms, _, _ = failing_app()
    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        await ms.publish_batch("payments", [{"n": n} for n in range(8)])
        await dead(ms, 8)
        page = (await http.get(f"{BASE}/reasons")).json()
        assert (page["total"], page["scanned"], page["bound"]) == (8, 5, 5)
        assert sum(r["count"] for r in page["reasons"]) == 5
        oldest = (await http.get(BASE, params={"offset": 7})).json()["items"][0]["id"]
        beyond = await http.get(f"{BASE}/{oldest}")
        assert beyond.status_code == 404
        assert "among the newest 5" in beyond.json()["detail"]
