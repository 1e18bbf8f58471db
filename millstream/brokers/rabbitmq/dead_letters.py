"""The dead letters of one group on RabbitMQ: the classic queue ``<topic>.<group>.dlq``.

A queue cannot be read without taking, so every operation *browses*: on a
channel of its own it takes every letter with ``basic.get`` (unacked),
then acks what it replayed or purged and closes the channel, which puts
the rest back where they were (a classic queue keeps their order). Limits:
an operation reads at most ``BROWSE_LIMIT`` letters; while one runs, the
letters it holds are invisible to another (a concurrent ``list`` may come
back short, a concurrent ``replay`` of the same id counts once, as it
should). Letter ids are assigned when a message is buried (header
``ms-dead-id``), so they are stable across listings.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from contextlib import suppress

from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic

from millstream.brokers.base import DeadLetter
from millstream.brokers.rabbitmq.connection import (
    NotFound,
    Publication,
    RabbitMqConnection,
    translated,
)
from millstream.brokers.rabbitmq.reading import letter, letter_id_of
from millstream.brokers.rabbitmq.topology import declare_group, declare_topic
from millstream.brokers.rabbitmq.wire import (
    HEADER_FAILED_AT,
    HEADER_LETTER_ID,
    Names,
    copy,
    tag_of,
)
from millstream.message import HEADER_ATTEMPT, HEADER_ERROR

__all__ = ["BROWSE_LIMIT", "RabbitMqDeadLetters"]

BROWSE_LIMIT = 100_000


class RabbitMqDeadLetters:
    """``list`` / ``count`` / ``replay`` / ``purge`` over the group's dead-letter queue."""

    def __init__(self, connection: RabbitMqConnection, names: Names) -> None:
        self._connection = connection
        self._names = names

    async def count(self) -> int:
        """Letters in the queue (0 when it does not exist)."""
        channel = await self._connection.channel(confirms=False)
        try:
            with translated(self._connection.url):
                declared = await channel.queue_declare(self._names.dlq, passive=True)
            return declared.message_count or 0
        except NotFound:
            return 0
        finally:
            with suppress(Exception):
                await channel.close()

    async def list(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Newest first."""
        channel, taken = await self._browse()
        try:
            newest_first = taken[::-1][offset : offset + limit]
            return [letter(self._names, delivered) for delivered in newest_first]
        finally:
            with suppress(Exception):
                await channel.close()

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        """Put letters back into the group's queue as fresh deliveries (attempt 1)."""
        names = self._names
        channel, taken = await self._browse()
        try:
            chosen = _chosen(taken, ids)
            if not chosen:
                return 0
            with translated(self._connection.url):
                queue_type = self._connection.options.queue_type
                await declare_topic(channel, names, queue_type)
                await declare_group(channel, names, queue_type)
            # A replayed letter starts over: no attempts before it, no error.
            drop = dict.fromkeys((HEADER_ATTEMPT, HEADER_ERROR, HEADER_LETTER_ID, HEADER_FAILED_AT))
            copies: list[Publication] = [("", names.queue, d.body, copy(d, **drop)) for d in chosen]
            await self._connection.send(copies, mandatory=True)
            await self._ack(channel, chosen)
            return len(chosen)
        finally:
            with suppress(Exception):
                await channel.close()

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        """Delete letters; all of them when ``ids`` is ``None``."""
        if ids is None:
            channel = await self._connection.channel(confirms=False)
            try:
                with translated(self._connection.url):
                    purged = await channel.queue_purge(self._names.dlq)
                return purged.message_count or 0
            except NotFound:
                return 0
            finally:
                with suppress(Exception):
                    await channel.close()
        channel, taken = await self._browse()
        try:
            chosen = _chosen(taken, ids)
            await self._ack(channel, chosen)
            return len(chosen)
        finally:
            with suppress(Exception):
                await channel.close()

    async def _browse(self) -> tuple[AbstractChannel, builtins.list[DeliveredMessage]]:
        """A fresh channel holding every letter (oldest first), unacked."""
        channel = await self._connection.channel(confirms=False)
        taken: builtins.list[DeliveredMessage] = []
        try:
            with translated(self._connection.url):
                while len(taken) < BROWSE_LIMIT:
                    got = await channel.basic_get(self._names.dlq, no_ack=False)
                    if not isinstance(got.delivery, Basic.GetOk):
                        break
                    taken.append(got)
        except NotFound:
            pass  # no such queue: no letters
        except BaseException:
            with suppress(Exception):
                await channel.close()
            raise
        return channel, taken

    async def _ack(self, channel: AbstractChannel, chosen: builtins.list[DeliveredMessage]) -> None:
        with translated(self._connection.url):
            for delivered in chosen:
                await channel.basic_ack(tag_of(delivered), wait=False)
            # Acks have no reply: one round trip makes sure they arrived
            # before the channel closes and returns the rest.
            await channel.basic_qos(prefetch_count=0)


def _chosen(taken: list[DeliveredMessage], ids: Sequence[str] | None) -> list[DeliveredMessage]:
    if ids is None:
        return taken
    wanted = set(ids)
    return [d for d in taken if letter_id_of(d) in wanted]
