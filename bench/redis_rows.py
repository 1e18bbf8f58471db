"""The Redis rows: millstream against the raw redis-py loop a careful engineer would write.

Both consume rows read the same stream setup: a fresh stream holding ``n``
order events published by ``publish_batch``, read by a new group created at
id 0. The raw loop is the redis-py best practice: ``XREADGROUP COUNT 256``,
parse each payload (orjson), update a dict, one ``XACK`` per batch.
Millstream runs a pydantic handler at-least-once with its default settings,
acks included in the time. The publish rows put ``n`` events on a fresh
stream each: the raw loop pipelines ``XADD`` in chunks, millstream calls
``publish_batch`` with the same chunks.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio

from bench.events import order_events
from bench.scenarios import answers, timed_consume
from millstream import Millstream

Row = dict[str, Any]

URL = os.environ.get("MILLSTREAM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CHUNK = 5000  # events per publish call or pipeline, as in the other rows
READ = 256


async def raw(n: int) -> Row:
    """The raw redis-py loop: pipelined XADD, then XREADGROUP COUNT 256 + one XACK per batch."""
    client = redis.asyncio.Redis.from_url(URL)
    published, stream = _stream(), _stream()
    try:
        started = time.perf_counter()
        for start in range(0, n, CHUNK):
            pipe = client.pipeline(transaction=False)
            for event in order_events(start, min(CHUNK, n - start)):
                pipe.xadd(published, {"payload": event.model_dump_json()})
            await pipe.execute()
        publish_rate = n / (time.perf_counter() - started)

        await _fill(stream, n)
        await client.xgroup_create(stream, "bench", id="0")
        totals: dict[str, int] = {}
        count = 0
        started = time.perf_counter()
        while count < n:
            reply = await client.xreadgroup("bench", "raw-1", {stream: ">"}, count=READ, block=1000)
            for _, entries in reply:
                ids = []
                for entry_id, fields in entries:
                    event = orjson.loads(fields[b"payload"])
                    totals[event["status"]] = totals.get(event["status"], 0) + event["amount"]
                    ids.append(entry_id)
                await client.xack(stream, "bench", *ids)
                count += len(ids)
        consume_rate = n / (time.perf_counter() - started)
    finally:
        await client.delete(published, stream)
        await client.aclose()
    return {"publish_msgs_s": publish_rate, "consume_msgs_s": consume_rate}


async def millstream(n: int) -> Row:
    """Millstream: ``publish_batch``, then a pydantic handler at-least-once, acks timed."""
    published, stream = _stream(), _stream()
    ms = Millstream(URL)
    await ms.broker.connect()
    try:
        started = time.perf_counter()
        for start in range(0, n, CHUNK):
            await ms.publish_batch(published, order_events(start, min(CHUNK, n - start)))
        publish_rate = n / (time.perf_counter() - started)

        await _fill(stream, n)
        consume_rate = await _consume(ms, stream, n)
    finally:
        await delete(published, stream)
    return {"publish_msgs_s": publish_rate, "consume_msgs_s": consume_rate}


async def _consume(ms: Millstream, stream: str, n: int) -> float:
    _, acked = await timed_consume(ms, stream, n)
    return n / acked


async def _fill(stream: str, n: int) -> None:
    """The stream both consume rows read: ``n`` events as ``publish_batch`` writes them."""
    ms = Millstream(URL)
    await ms.broker.connect()
    try:
        for start in range(0, n, CHUNK):
            await ms.publish_batch(stream, order_events(start, min(CHUNK, n - start)))
    finally:
        await ms.broker.close()


async def delete(*streams: str) -> None:
    """Delete the streams and every key millstream made for them (groups' retries, dead letters)."""
    client = redis.asyncio.Redis.from_url(URL)
    try:
        keys = [key for s in streams async for key in client.scan_iter(match=f"{s}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def _stream() -> str:
    return f"bench-{uuid.uuid4().hex[:12]}"


def reachable() -> str | None:
    """``None`` when the bench Redis answers, else why not."""

    async def ping() -> None:
        client = redis.asyncio.Redis.from_url(URL, socket_connect_timeout=1)
        try:
            await client.ping()
        finally:
            await client.aclose()

    return answers(URL, ping)


SCENARIOS: dict[str, Callable[[int], Awaitable[Row]]] = {
    "redis-raw": raw,
    "redis": millstream,
}
CLIENT = "redis"
RATIOS = {"consume_msgs_s": 0.5, "publish_msgs_s": 0.5}  # millstream / raw redis-py
TITLE = "Redis Streams"
CAPTION = (
    "raw: XREADGROUP COUNT 256, orjson, dict update, one XACK per batch; pipelined XADD. "
    "millstream: pydantic handler, at-least-once, default settings; publish_batch."
)

__all__ = ["CAPTION", "CLIENT", "RATIOS", "SCENARIOS", "TITLE", "URL", "delete", "reachable"]
