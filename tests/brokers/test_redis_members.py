"""Redis members: what one only buffered comes back under its name; processes sharing a group."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis.asyncio

from tests.brokers.redis_support import opened
from tests.procs.group import ends, ready, spawn, stop
from tests.proxy import TcpProxy
from tests.support import (
    events,
    fetch_n,
    numbers,
    until,
)


async def test_what_a_member_only_buffered_comes_back_uncounted_under_its_name(
    shared: str, topic: str, proxy: TcpProxy
) -> None:
    broker = await opened(f"redis://127.0.0.1:{proxy.port}/0?lease=30")
    admin = redis.asyncio.Redis.from_url(shared)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        for n in (0, 1):  # retries, read with the topic in one XREADGROUP
            payload = json.dumps({"n": n}).encode()
            await admin.xadd(f"{topic}:retry:billing", {"id": f"r{n}", "payload": payload})
        await broker.publish(topic, events(2, start=2))
        handed = await sub.fetch(2, 1.0)  # and the topic's two wait in the subscription
        assert numbers(handed) == [0, 1]
        proxy.pause()
        proxy.cut()
        await sub.close()  # cannot release: the server is out of reach
        proxy.resume()

        again = await broker.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        got = await fetch_n(again, 4, within=1.0)
        attempts = {n: m.attempt for n, m in zip(numbers(got), got, strict=True)}
        assert attempts == {0: 2, 1: 2, 2: 1, 3: 1}  # handed out counts, buffered does not
        await again.settle(got, [], [])
    finally:
        await admin.aclose()
        await broker.close()


@pytest.mark.slow
async def test_three_processes_share_a_group_and_handle_each_message_once(
    shared: str, topic: str, tmp_path: Path
) -> None:
    logs = [tmp_path / f"consumer-{i}.log" for i in range(3)]
    processes = [spawn(f"{shared}?lease=30", topic, log, sleep=0.004) for log in logs]
    try:
        await until(lambda: ready(logs), within=30)
        await asyncio.sleep(0.5)  # connected and subscribed
        publisher = await opened(shared)
        await publisher.publish(topic, events(3000))
        await publisher.close()
        await until(lambda: sum(len(ends(log)) for log in logs) >= 3000, within=60)
        await asyncio.sleep(0.3)
    finally:
        stop(processes)

    handled = [n for log in logs for n, _ in ends(log)]
    assert sorted(handled) == list(range(3000)), "a message was lost or handled twice"
    assert all(ends(log) for log in logs), "a process got no work"
