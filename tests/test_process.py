"""The hard paths with real processes on the SQLite broker: SIGKILL and SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from millstream import Millstream, connect
from tests.support import until

pytestmark = pytest.mark.slow

TOPIC, GROUP = "orders", "workers"
ROOT = Path(__file__).resolve().parent.parent


def spawn(url: str, log: Path, sleep: float, concurrency: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.procs.consumer",
            url,
            TOPIC,
            GROUP,
            str(log),
            str(sleep),
            str(concurrency),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )


def events(log: Path, kind: str) -> list[int]:
    if not log.exists():
        return []
    return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith(kind)]


async def publish(url: str, count: int) -> None:
    ms = Millstream(url)
    await ms.broker.connect()
    await ms.publish_batch(TOPIC, [{"n": i} for i in range(count)])
    await ms.broker.close()


async def unacked(url: str) -> list[int]:
    """What the group still has to handle: fetched by a fresh member, then released."""
    broker = connect(url)
    await broker.connect()
    sub = await broker.subscribe(TOPIC, GROUP, prefetch=1000)
    got = []
    while batch := await sub.fetch(1000, timeout=0.3):
        got.extend(batch)
    await sub.close()
    await broker.close()
    return sorted(int(m.payload.split(b":")[1].rstrip(b"}")) for m in got)


async def test_sigkill_mid_stream_loses_nothing_and_redelivers_only_the_unacked(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/broker.db?lease=1"
    log = tmp_path / "handled.log"
    total = 2000
    await publish(url, total)

    first = spawn(url, log, sleep=0.002, concurrency=8)
    await until(lambda: len(events(log, "end")) >= total // 3, within=30)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    handled_before = set(events(log, "end"))
    assert 0 < len(handled_before) < total

    await asyncio.sleep(1.2)  # the dead member's leases run out
    pending = await unacked(url)
    assert set(pending) >= set(range(total)) - handled_before, "an unhandled message was lost"
    in_doubt = set(pending) & handled_before
    assert len(in_doubt) <= 256 + 8, "more handled-but-unacked messages than could be in flight"

    log.write_text("")
    second = spawn(url, log, sleep=0.0, concurrency=8)
    try:
        await until(lambda: len(events(log, "end")) >= len(pending), within=30)
        await asyncio.sleep(0.3)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=15) == 0
    handled_after = events(log, "end")

    assert sorted(handled_after) == pending, "redelivered something acked, or missed one"
    assert handled_before | set(handled_after) == set(range(total))
    assert await unacked(url) == []


async def test_sigterm_drains_in_flight_handlers_and_exits_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/broker.db?lease=30"
    log = tmp_path / "handled.log"
    await publish(url, 400)

    proc = spawn(url, log, sleep=0.3, concurrency=8)
    await until(lambda: len(events(log, "start")) >= 16, within=30)
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = proc.wait(timeout=15)
    assert code == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert time.monotonic() - started < 5

    lines = log.read_text().splitlines()
    assert lines[-1] == "exit"
    starts, ends = events(log, "start"), events(log, "end")
    assert sorted(starts) == sorted(ends), "a handler was cut off mid-flight"
    # Everything handled was acked; everything else is waiting, on its first attempt.
    pending = await unacked(url)
    assert set(pending) == set(range(400)) - set(ends)
    broker = connect(url)
    await broker.connect()
    sub = await broker.subscribe(TOPIC, GROUP, prefetch=500)
    assert {m.attempt for m in await sub.fetch(500, timeout=1)} == {1}
    await broker.close()
