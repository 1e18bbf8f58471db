"""SQLite leases: keys a live member holds, leases run out or extended, takeovers by name."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.brokers.sqlite_support import TOPIC, opened, outgoing, payloads, url_of


async def test_a_key_leased_by_another_live_member_holds_its_followers(tmp_path: Path) -> None:
    url = url_of(tmp_path / "broker.db")
    async with opened(url) as first, opened(url) as second:
        one = await first.subscribe(TOPIC, "billing", prefetch=10)
        two = await second.subscribe(TOPIC, "billing", prefetch=10)
        await first.publish(TOPIC, outgoing("a1", "a2", key="order-a"))
        await first.publish(TOPIC, outgoing("b1", key="order-b"))
        await first.publish(TOPIC, outgoing("a3", key="order-a"))

        head = await one.fetch(1, 1.0)
        assert payloads(head) == ["a1"]
        # a2 and a3 wait while another member holds a1; other keys need not.
        assert payloads(await two.fetch(10, 0.2)) == ["b1"]
        assert await two.fetch(10, 0.1) == []
        # The holder itself may take them: within a member the runtime orders by key.
        assert payloads(await one.fetch(10, 0.2)) == ["a2", "a3"]


async def test_a_delayed_retry_does_not_hold_back_later_messages_of_its_key(
    tmp_path: Path,
) -> None:
    url = url_of(tmp_path / "broker.db")
    async with opened(url) as first, opened(url) as second:
        one = await first.subscribe(TOPIC, "billing", prefetch=10)
        two = await second.subscribe(TOPIC, "billing", prefetch=10)
        await first.publish(TOPIC, outgoing("a1", "a2", "a3", key="order-a"))
        head = await one.fetch(1, 1.0)

        # Per-key order holds among first deliveries; a retry may be overtaken.
        await one.settle([], [(head[0], 0.3)], [])
        later = await two.fetch(10, 1.0)
        assert payloads(later) == ["a2", "a3"]

        # Once due, the retry still waits while another member holds its key.
        await asyncio.sleep(0.4)
        assert await one.fetch(10, 0.1) == []
        await two.settle(later, [], [])
        assert [(m.payload, m.attempt) for m in await one.fetch(10, 1.0)] == [(b"a1", 2)]


async def test_a_key_held_by_a_member_whose_lease_ran_out_is_free(tmp_path: Path) -> None:
    url = url_of(tmp_path / "broker.db", lease=0.3)
    async with opened(url) as doomed, opened(url) as survivor:
        dying = await doomed.subscribe(TOPIC, "billing", prefetch=10)
        living = await survivor.subscribe(TOPIC, "billing", prefetch=10)
        await doomed.publish(TOPIC, outgoing("a1", "a2", key="order-a"))
        assert payloads(await dying.fetch(1, 1.0)) == ["a1"]

        assert await living.fetch(10, 0.1) == []
        back = await living.fetch(10, 2.0)
        assert [(m.payload, m.attempt) for m in back] == [(b"a1", 2), (b"a2", 1)]


@pytest.mark.parametrize("keep_fetching", [10, 0], ids=["fetch", "fetch-nothing"])
async def test_lease_is_extended_while_the_member_keeps_fetching(
    tmp_path: Path, keep_fetching: int
) -> None:
    url = url_of(tmp_path / "broker.db", lease=0.5)
    async with opened(url) as slow_side, opened(url) as other_side:
        slow = await slow_side.subscribe(TOPIC, "billing", prefetch=10)
        other = await other_side.subscribe(TOPIC, "billing", prefetch=10)
        await slow_side.publish(TOPIC, outgoing("x", "y"))
        held = await slow.fetch(10, 1.0)
        assert payloads(held) == ["x", "y"]

        # A slow handler runs for four lease periods; the runtime keeps fetching.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert await slow.fetch(keep_fetching, 0.1) == []
            assert await other.fetch(10, 0.0) == []

        await slow.settle(held, [], [])
        assert (await slow.lag()).total == 0


async def test_messages_of_an_expired_lease_count_as_taken_over_once_per_fetch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = url_of(tmp_path / "broker.db", lease=0.3)
    async with opened(url) as doomed, opened(url) as survivor:
        dying = await doomed.subscribe(TOPIC, "billing", prefetch=10, member="web-3.charge")
        nameless = await doomed.subscribe(TOPIC, "billing", prefetch=10)
        living = await survivor.subscribe(TOPIC, "billing", prefetch=10, member="web-1.charge")
        await doomed.publish(TOPIC, outgoing("a", "b", "c", "d", "e", "f"))
        assert payloads(await dying.fetch(3, 1.0)) == ["a", "b", "c"]
        assert payloads(await nameless.fetch(1, 1.0)) == ["d"]
        # Both are abandoned from here on: no settle, no fetch, no close.
        fresh = await living.fetch(10, 0.1)
        assert (payloads(fresh), living.taken_over) == (["e", "f"], 0)
        await living.settle(fresh, [], [])

        back = await living.fetch(10, 2.0)
        assert payloads(back) == ["a", "b", "c", "d"]
        await living.settle(back, [], [])
        assert await living.fetch(10, 0.5) == []

        assert living.taken_over == 4
        lines = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
        assert len(lines) == 1 and lines[0].startswith(
            f"sqlite: member web-1.charge took over 4 message(s) of {TOPIC}/billing held by "
            "web-3.charge (3), an unnamed member (1), which stopped"
        )


async def test_a_taken_over_message_retried_or_given_back_is_no_takeover_again(
    tmp_path: Path,
) -> None:
    async with opened(url_of(tmp_path / "broker.db", lease=0.3)) as broker:
        stopped = await broker.subscribe(TOPIC, "billing", prefetch=10, member="m1")
        heir = await broker.subscribe(TOPIC, "billing", prefetch=10, member="m2")
        await broker.publish(TOPIC, outgoing("a", "b"))
        assert len(await stopped.fetch(2, 1.0)) == 2  # then it stops calling
        a, _ = await heir.fetch(2, 2.0)
        assert heir.taken_over == 2
        await heir.settle([], [(a, 0.0)], [])  # a retry, due now
        await heir.close()  # b is given back
        third = await broker.subscribe(TOPIC, "billing", prefetch=10, member="m3")
        again = await third.fetch(10, 1.0)
        assert [(m.payload, m.attempt) for m in again] == [(b"a", 3), (b"b", 2)]
        assert third.taken_over == 0
