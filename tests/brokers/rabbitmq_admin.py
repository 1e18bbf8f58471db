"""Test plumbing for RabbitMQ: where the shared node is, and deleting what a test declared.

RabbitMQ has no key scan; each :class:`RabbitMqBroker` records what it
declared (``broker.declared``), and :func:`delete_declared` removes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import aiormq

from millstream.brokers.rabbitmq.broker import RabbitMqBroker
from millstream.brokers.rabbitmq.wire import RETRY_STEPS_MS, Names

__all__ = ["HOST", "PORT", "SHARED", "delete_declared", "delete_names"]

HOST, PORT = "127.0.0.1", 5672
SHARED = f"amqp://guest:guest@{HOST}:{PORT}/"


async def delete_declared(brokers: Iterable[RabbitMqBroker]) -> None:
    """Delete every exchange and queue the brokers declared (on the shared node)."""
    found: set[tuple[str, str]] = set()
    for broker in brokers:
        found |= broker.declared
    await _delete(found)


async def delete_names(topic: str, groups: Iterable[str]) -> None:
    """Delete the topology of ``topic`` and ``groups``, retry queues of every step included."""
    found = {("exchange", topic), ("exchange", f"{topic}.unrouted"), ("queue", f"{topic}.unrouted")}
    for group in groups:
        names = Names(topic, group)
        found |= {("queue", names.queue), ("queue", names.dlq)}
        found |= {("queue", names.retry(step)) for step in RETRY_STEPS_MS}
    await _delete(found)


async def _delete(found: set[tuple[str, str]]) -> None:
    if not found:
        return
    connection = await aiormq.connect(SHARED)
    try:
        channel = await connection.channel()
        for kind, name in sorted(found):
            if channel.is_closed:
                channel = await connection.channel()
            with contextlib.suppress(Exception):
                if kind == "queue":
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)
    finally:
        await connection.close()
