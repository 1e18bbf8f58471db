"""The NATS JetStream rows: millstream against the raw nats-py loop a careful engineer would write.

Both consume rows read the same stream setup: a fresh stream holding ``n``
order events published by ``publish_batch``, read by a new durable pull
consumer (explicit ack). The raw loop is the nats-py best practice:
``fetch(256)``, parse each payload (orjson), update a dict, ``ack()`` each
message (fire and forget, as nats-py's ``Msg.ack`` does). Millstream runs a
pydantic handler at-least-once with its default settings, acks included in
the time (its acks are fenced: the batch's last one waits for the server).
The publish rows put ``n`` events on a fresh stream each: the raw loop is
nats-py's windowed ``publish_async`` (every acknowledgement awaited per
chunk), millstream calls ``publish_batch`` with the same chunks.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import orjson
from nats.aio.client import Client
from nats.js import api

from bench.events import order_events
from bench.scenarios import answers, timed_consume
from millstream import Millstream

Row = dict[str, Any]

URL = os.environ.get("MILLSTREAM_BENCH_NATS_URL", "nats://127.0.0.1:4222")
CHUNK = 5000  # events per publish call or window, as in the other rows
READ = 256


async def raw(n: int) -> Row:
    """The raw nats-py loop: windowed publish_async, then fetch(256) + ack per message."""
    client = await nats.connect(URL)
    js = client.jetstream()
    published, topic = _topic(), _topic()
    raw_stream = f"RAW_{published.replace('-', '_')}"
    try:
        await js.add_stream(name=raw_stream, subjects=[published])
        started = time.perf_counter()
        for start in range(0, n, CHUNK):
            for event in order_events(start, min(CHUNK, n - start)):
                await js.publish_async(published, event.model_dump_json().encode())
            await js.publish_async_completed()
        publish_rate = n / (time.perf_counter() - started)

        stream = await _fill(topic, n)
        config = api.ConsumerConfig(
            durable_name="bench", ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=20_000
        )
        await js.add_consumer(stream, config)
        pull = await js.pull_subscribe_bind("bench", stream)
        totals: dict[str, int] = {}
        count = 0
        started = time.perf_counter()
        while count < n:
            try:
                batch = await pull.fetch(READ, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in batch:
                event = orjson.loads(msg.data)
                totals[event["status"]] = totals.get(event["status"], 0) + event["amount"]
                await msg.ack()
            count += len(batch)
        await client.flush()
        consume_rate = n / (time.perf_counter() - started)
    finally:
        await _delete(client, raw_stream, _stream_of(topic))
        await client.close()
    return {"publish_msgs_s": publish_rate, "consume_msgs_s": consume_rate}


async def millstream(n: int) -> Row:
    """Millstream: ``publish_batch``, then a pydantic handler at-least-once, acks timed."""
    published, topic = _topic(), _topic()
    ms = Millstream(URL)
    await ms.broker.connect()
    try:
        started = time.perf_counter()
        for start in range(0, n, CHUNK):
            await ms.publish_batch(published, order_events(start, min(CHUNK, n - start)))
        publish_rate = n / (time.perf_counter() - started)

        await _fill(topic, n)
        _, acked = await timed_consume(ms, topic, n)
        consume_rate = n / acked
    finally:
        await delete(published, topic)
    return {"publish_msgs_s": publish_rate, "consume_msgs_s": consume_rate}


async def _fill(topic: str, n: int) -> str:
    """The stream both consume rows read: ``n`` events as ``publish_batch`` writes them."""
    ms = Millstream(URL)
    await ms.broker.connect()
    try:
        for start in range(0, n, CHUNK):
            await ms.publish_batch(topic, order_events(start, min(CHUNK, n - start)))
    finally:
        await ms.broker.close()
    return _stream_of(topic)


def _stream_of(topic: str) -> str:
    from millstream.brokers.nats.names import Names

    return Names(topic, "").stream


async def _delete(client: Client, *streams: str) -> None:
    js = client.jsm()
    for stream in streams:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(stream)


async def delete(*topics: str) -> None:
    """Delete the topics' streams, and their members' records in ``MSHELD``."""
    from millstream.brokers.nats.names import HELD_STREAM

    client = await nats.connect(URL)
    try:
        streams = [_stream_of(topic) for topic in topics]
        await _delete(client, *streams)
        for stream in streams:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await client.jsm().purge_stream(HELD_STREAM, subject=f"_ms.*.{stream}.>")
    finally:
        await client.close()


def _topic() -> str:
    return f"bench-{uuid.uuid4().hex[:12]}"


def reachable() -> str | None:
    """``None`` when the bench NATS answers with JetStream, else why not."""

    async def ping() -> None:
        client = await nats.connect(URL, connect_timeout=1, allow_reconnect=False)
        try:
            await client.jsm().account_info()
        finally:
            await client.close()

    return answers(URL, ping, why=repr)


SCENARIOS: dict[str, Callable[[int], Awaitable[Row]]] = {
    "nats-raw": raw,
    "nats": millstream,
}
CLIENT = "nats"
RATIOS = {"consume_msgs_s": 0.6, "publish_msgs_s": 0.8}  # millstream / raw nats-py
TITLE = "NATS JetStream"
CAPTION = (
    "raw: pull fetch(256), orjson, dict update, ack() per message; windowed publish_async. "
    "millstream: pydantic handler, at-least-once, default settings; publish_batch."
)

__all__ = ["CAPTION", "CLIENT", "RATIOS", "SCENARIOS", "TITLE", "URL", "delete", "reachable"]
