"""What the memory broker adds to the contract: members that come back under their name."""

from __future__ import annotations

import asyncio
import logging

import pytest

from millstream.brokers.memory.broker import MemoryBroker, MemoryHub
from millstream.message import OutgoingMessage


async def test_a_member_back_under_its_name_takes_back_at_once_what_it_held() -> None:
    hub = MemoryHub(lease=30)
    crashed = MemoryBroker(hub)
    await crashed.connect()
    await crashed.publish("t", [OutgoingMessage(b"%d" % i) for i in range(5)])
    held = await (await crashed.subscribe("t", "g", prefetch=5, member="web-0.g")).fetch(5, 1)
    crashed.abandon()  # the process died: nothing released, the lease has 30 s to run

    restarted = MemoryBroker(hub)
    await restarted.connect()
    stranger = await restarted.subscribe("t", "g", prefetch=5, member="web-1.g")
    assert await stranger.fetch(5, 0) == []
    back = await restarted.subscribe("t", "g", prefetch=5, member="web-0.g")
    again = await back.fetch(5, 0)

    assert [m.id for m in again] == [m.id for m in held]
    assert all(m.attempt == 2 for m in again)  # a crash counts
    assert back.taken_over == 5 and stranger.taken_over == 0


async def test_a_takeover_after_the_lease_is_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = MemoryHub(lease=0.2)
    crashed, survivor = MemoryBroker(hub), MemoryBroker(hub)
    await crashed.connect()
    await survivor.connect()
    await crashed.publish("t", [OutgoingMessage(b"%d" % i) for i in range(3)])
    assert len(await (await crashed.subscribe("t", "g", prefetch=3, member="a")).fetch(3, 1)) == 3
    crashed.abandon()
    taker = await survivor.subscribe("t", "g", prefetch=3, member="b")

    await asyncio.sleep(0.25)
    with caplog.at_level(logging.WARNING, logger="millstream.brokers"):
        taken = await taker.fetch(3, 1)

    assert len(taken) == 3 and taker.taken_over == 3
    [line] = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
    assert "b took over 3 message(s) of t/g held by a" in line
