"""Declaring the exchanges and queues of :mod:`millstream.brokers.rabbitmq.wire`.

Every declaration is idempotent, so subscribing again after a reconnect (or
a broker that lost its definitions) declares everything again and resumes.
"""

from __future__ import annotations

from aiormq.abc import AbstractChannel
from pamqp.common import FieldValue

from millstream.brokers.rabbitmq.wire import Names

__all__ = ["declare_group", "declare_retry", "declare_topic"]


def _queue_arguments(queue_type: str) -> dict[str, FieldValue]:
    return {"x-queue-type": queue_type}


async def declare_topic(channel: AbstractChannel, names: Names, queue_type: str) -> None:
    """The topic exchange, and the holding queue behind it for messages no group takes.

    A fanout exchange drops what it cannot route; publishing before any
    group exists would lose it. Its alternate exchange routes such messages
    to ``T.unrouted``, which the first group to subscribe adopts.
    """
    await channel.exchange_declare(names.unrouted, exchange_type="fanout", durable=True)
    await channel.queue_declare(
        names.unrouted, durable=True, arguments=_queue_arguments(queue_type)
    )
    await channel.queue_bind(names.unrouted, names.unrouted)
    await channel.exchange_declare(
        names.exchange,
        exchange_type="fanout",
        durable=True,
        arguments={"alternate-exchange": names.unrouted},
    )


async def declare_group(channel: AbstractChannel, names: Names, queue_type: str) -> None:
    """The group's queue bound to the topic, and its dead-letter queue.

    The dead-letter queue is a classic queue: listing it takes every letter
    and puts it back, and a classic queue puts returned messages back where
    they were, so the order (and the listing) stays stable.
    """
    await channel.queue_declare(names.queue, durable=True, arguments=_queue_arguments(queue_type))
    await channel.queue_bind(names.queue, names.exchange)
    await channel.queue_declare(names.dlq, durable=True)


async def declare_retry(channel: AbstractChannel, names: Names, step_ms: int) -> None:
    """The retry queue of one delay step: expired messages go back to the group's queue only.

    The TTL is the queue's, so every message in it waits the same time and
    they expire in order; dead-lettering goes through the default exchange
    straight to ``Q``, so other groups of the topic never see a retry.
    """
    await channel.queue_declare(
        names.retry(step_ms),
        durable=True,
        arguments={
            "x-queue-type": "classic",
            "x-message-ttl": step_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": names.queue,
        },
    )
