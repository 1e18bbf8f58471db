"""The RabbitMQ rows: millstream against the raw aio-pika loop a careful engineer would write.

Both consume rows read the same setup: the group queue millstream declares
for topic ``T`` and group ``bench`` (a quorum queue bound to the fanout
exchange ``T``), holding ``n`` order events published by ``publish_batch``.
The raw loop is the aio-pika best practice: ``prefetch_count=256``, a
consumer callback that parses each payload (orjson) and updates a dict, and
one ``ack(multiple=True)`` per 64 messages (a quarter of the window, so
RabbitMQ never waits for an ack). Millstream runs a pydantic handler
at-least-once with its default settings, acks included in the time.

The publish rows put ``n`` persistent events on a fresh topic each (same
exchange and quorum queue): the raw publisher uses aio-pika with publisher
confirms, ``WINDOW`` publishes in flight and waited for together;
millstream calls ``publish_batch`` with chunks of the same size.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import orjson

from bench.events import order_events
from bench.scenarios import answers, timed_consume
from millstream import Millstream
from millstream.brokers.rabbitmq.broker import RabbitMqBroker

Row = dict[str, Any]

URL = os.environ.get("MILLSTREAM_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
CHUNK = 5000  # events per publish call, as in the other rows
WINDOW = 2000  # raw publishes awaiting confirms at once
PREFETCH = 256
ACK_EVERY = 64
GROUP = "bench"


async def raw(n: int) -> Row:
    """aio-pika: windowed confirmed publishes; then prefetch 256, ack(multiple=True) per batch."""
    published, topic = _topic(), _topic()
    try:
        await declare(published)
        connection = await aio_pika.connect(URL)
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(published)
            started = time.perf_counter()
            for start in range(0, n, CHUNK):
                events = order_events(start, min(CHUNK, n - start))
                bodies = [event.model_dump_json().encode() for event in events]
                for first in range(0, len(bodies), WINDOW):
                    await asyncio.gather(
                        *[
                            exchange.publish(
                                aio_pika.Message(
                                    body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                                ),
                                routing_key="",
                            )
                            for body in bodies[first : first + WINDOW]
                        ]
                    )
            publish_rate = n / (time.perf_counter() - started)

            await _fill(topic, n)
            consume_rate = await _raw_consume(channel, f"{topic}.bench", n)
        finally:
            await connection.close()
    finally:
        await delete(published, topic)
    return {"publish_msgs_s": publish_rate, "consume_msgs_s": consume_rate}


async def _raw_consume(channel: aio_pika.abc.AbstractChannel, queue_name: str, n: int) -> float:
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.get_queue(queue_name)
    totals: dict[str, int] = {}
    count = 0
    done = asyncio.Event()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal count
        event = orjson.loads(message.body)
        totals[event["status"]] = totals.get(event["status"], 0) + event["amount"]
        count += 1
        if count % ACK_EVERY == 0 or count >= n:
            await message.ack(multiple=True)
        if count >= n:
            done.set()

    started = time.perf_counter()
    tag = await queue.consume(on_message)
    await done.wait()
    elapsed = time.perf_counter() - started
    await queue.cancel(tag)
    return n / elapsed


async def millstream(n: int) -> Row:
    """Millstream: ``publish_batch``, then a pydantic handler at-least-once, acks timed."""
    published, topic = _topic(), _topic()
    try:
        await declare(published)
        ms = Millstream(URL)
        await ms.broker.connect()
        started = time.perf_counter()
        for start in range(0, n, CHUNK):
            await ms.publish_batch(published, order_events(start, min(CHUNK, n - start)))
        publish_rate = n / (time.perf_counter() - started)
        await ms.broker.close()

        await _fill(topic, n)
        ms = Millstream(URL)
        _, acked = await timed_consume(ms, topic, n)
        consume_rate = n / acked
    finally:
        await delete(published, topic)
    return {"publish_msgs_s": publish_rate, "consume_msgs_s": consume_rate}


async def declare(topic: str, group: str = GROUP) -> None:
    """The topic's exchange and the group's queue, as millstream declares them."""
    broker = RabbitMqBroker.from_url(URL)
    await broker.connect()
    try:
        subscription = await broker.subscribe(topic, group, prefetch=PREFETCH)
        await subscription.close()
    finally:
        await broker.close()


async def _fill(topic: str, n: int) -> None:
    """The queue both consume rows read: ``n`` events as ``publish_batch`` writes them."""
    await declare(topic)
    ms = Millstream(URL)
    await ms.broker.connect()
    try:
        for start in range(0, n, CHUNK):
            await ms.publish_batch(topic, order_events(start, min(CHUNK, n - start)))
    finally:
        await ms.broker.close()


async def delete(*topics: str, group: str = GROUP) -> None:
    """Drop what a row declared (its group never retries: no retry queues)."""
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel()
        for topic in topics:
            for queue in (f"{topic}.{group}", f"{topic}.{group}.dlq", f"{topic}.unrouted"):
                await channel.queue_delete(queue)
            for exchange in (topic, f"{topic}.unrouted"):
                await channel.exchange_delete(exchange)
    finally:
        await connection.close()


def _topic() -> str:
    return f"bench-{uuid.uuid4().hex[:12]}"


def reachable() -> str | None:
    """``None`` when the bench RabbitMQ answers, else why not."""

    async def ping() -> None:
        connection = await aio_pika.connect(URL, timeout=2)
        await connection.close()

    return answers(URL, ping)


SCENARIOS: dict[str, Callable[[int], Awaitable[Row]]] = {
    "rabbitmq-raw": raw,
    "rabbitmq": millstream,
}
CLIENT = "aio_pika"
RATIOS = {"consume_msgs_s": 0.8, "publish_msgs_s": 0.8}  # millstream / raw aio-pika
TITLE = "RabbitMQ (quorum queue)"
CAPTION = (
    "raw: aio-pika, prefetch 256, orjson, dict update, ack(multiple=True) per 64; "
    "confirmed publishes, 2000 in flight. millstream: pydantic handler, at-least-once, "
    "default settings; publish_batch."
)

__all__ = [
    "CAPTION",
    "CLIENT",
    "RATIOS",
    "SCENARIOS",
    "TITLE",
    "URL",
    "declare",
    "delete",
    "reachable",
]
