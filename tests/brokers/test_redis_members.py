"""Redis group members: takeovers by name or after the lease, and processes sharing a group."""

from __future__ import annotations

import asyncio
import json
import time
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
    total_lag,
    until,
)


def took_over(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]


async def test_a_member_back_under_its_name_takes_back_at_once_what_it_held(
    shared: str, topic: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    gone = await opened(f"redis://127.0.0.1:{proxy.port}/0?lease=30")
    back = await opened(f"{shared}?lease=30")
    try:
        crashed = await gone.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        await back.publish(topic, events(8))
        assert numbers(await crashed.fetch(5, 1.0)) == [0, 1, 2, 3, 4]
        proxy.pause()
        proxy.cut()  # the process died: nothing released, the lease is 30s

        started = time.monotonic()
        again = await back.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        got = await fetch_n(again, 8, within=1.0)
        took = time.monotonic() - started
        assert sorted(numbers(got)) == list(range(8)), f"{len(got)} back within {took:.2f}s"
        assert {n: m.attempt for n, m in zip(numbers(got), got, strict=True)} == {
            0: 2, 1: 2, 2: 2, 3: 2, 4: 2, 5: 1, 6: 1, 7: 1  # a crash counts
        }  # fmt: skip
        assert took < 1.0 and again.taken_over == 5
        [line] = took_over(caplog)
        assert f"member web-1.charge took over 5 message(s) of {topic}/billing held by " in line
        assert "web-1.charge, which stopped calling" in line
        await again.settle(got, [], [])
        assert await total_lag(again) == 0
    finally:
        await back.close()
        await gone.close()


async def test_a_takeover_after_the_lease_is_counted_and_logged_once(
    shared: str, topic: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    gone = await opened(f"redis://127.0.0.1:{proxy.port}/0?lease=1")
    alive = await opened(f"{shared}?lease=1")
    try:
        crashed = await gone.subscribe(topic, "billing", prefetch=10, member="web-3.charge")
        other = await alive.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        await alive.publish(topic, events(6))
        assert numbers(await crashed.fetch(10, 1.0)) == list(range(6))
        proxy.pause()
        proxy.cut()

        got = await fetch_n(other, 6, within=5)
        assert sorted(numbers(got)) == list(range(6)) and {m.attempt for m in got} == {2}
        assert other.taken_over == 6
        [line] = took_over(caplog)
        assert (
            f"member web-1.charge took over 6 message(s) of {topic}/billing held by "
            "web-3.charge, which stopped calling " in line
        )
        await other.settle(got, [], [])
        assert await fetch_n(other, 1, within=1.5) == [] and other.taken_over == 6
    finally:
        await alive.close()
        await gone.close()


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
