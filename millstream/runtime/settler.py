"""Batches outcomes into as few ``Subscription.settle`` round trips as possible."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import NamedTuple

from millstream.brokers.base import Subscription
from millstream.message import Message

__all__ = ["Settled", "Settler"]


class Settled(NamedTuple):
    """One flushed batch: how many outcomes, and the messages that will not come again."""

    size: int
    acks: list[Message]
    deads: list[tuple[Message, str]]


class Settler:
    """Collects acks, requeues and dead letters; flushes every ``interval`` or ``batch``.

    Only ``run`` talks to the subscription, so batches never overlap. Every
    batch is reported to ``on_settled`` with whether the broker took it. If
    ``settle`` raises, ``run`` ends with that error and the batch is dropped:
    the broker still holds those messages and redelivers them, which is
    at-least-once. Outcomes that arrive after that stay collected until
    ``take_pending``.
    """

    def __init__(
        self,
        subscription: Subscription,
        *,
        batch: int,
        interval: float,
        on_settled: Callable[[Settled, bool], None],
    ) -> None:
        self._subscription = subscription
        self._batch = batch
        self._interval = interval
        self._on_settled = on_settled
        self._acks: list[Message] = []
        self._requeues: list[tuple[Message, float]] = []
        self._deads: list[tuple[Message, str]] = []
        self._collected = 0  # outcomes of all three kinds since the last flush
        self._has_items = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False

    def ack(self, message: Message) -> None:
        """The handler finished: acknowledge ``message``."""
        self._acks.append(message)
        self._added()

    def requeue(self, message: Message, delay: float) -> None:
        """Deliver ``message`` again after ``delay`` seconds, as its next attempt."""
        self._requeues.append((message, delay))
        self._added()

    def dead(self, message: Message, reason: str) -> None:
        """Park ``message`` in the dead-letter queue with ``reason``."""
        self._deads.append((message, reason))
        self._added()

    def flush_now(self) -> None:
        """Ask ``run`` to flush without waiting for the interval (the fetch loop is starved)."""
        if self._collected:
            self._full.set()

    def _added(self) -> None:
        self._collected += 1
        if self._collected == 1:
            self._has_items.set()
        if self._collected >= self._batch:
            self._full.set()

    async def run(self) -> None:
        """Flush until ``close``; raises what ``settle`` raised."""
        while True:
            await self._has_items.wait()
            if not self._closing and self._collected < self._batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._full.wait()
            await self._flush()
            if self._closing and not self._collected:
                return

    def close(self) -> None:
        """Make ``run`` flush what is pending and return; no more outcomes may arrive."""
        self._closing = True
        self._has_items.set()
        self._full.set()

    def take_pending(self) -> Settled:
        """Take what is pending, unsent: ``run`` has ended and will not send it."""
        batch = Settled(self._collected, self._acks, self._deads)
        self._acks, self._requeues, self._deads = [], [], []
        self._collected = 0
        self._has_items.clear()
        self._full.clear()
        return batch

    async def _flush(self) -> None:
        requeues = self._requeues
        batch = self.take_pending()
        if not batch.size:
            return
        try:
            await self._subscription.settle(batch.acks, requeues, batch.deads)
        except BaseException:
            self._on_settled(batch, False)
            raise
        self._on_settled(batch, True)
