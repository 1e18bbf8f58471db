"""One member of a group on the memory broker: fetch, settle, lag, release, on the hub."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from millstream.brokers.base import Lag
from millstream.brokers.memory.connection import MemoryConnection
from millstream.errors import BrokerUnavailable
from millstream.message import Message

__all__ = ["MemorySubscription"]


class MemorySubscription:
    """A group member on the memory broker."""

    def __init__(
        self,
        connection: MemoryConnection,
        topic: str,
        group: str,
        owner: int,
        *,
        forget: Callable[[MemorySubscription], None],
    ) -> None:
        self.taken_over = 0  # messages taken from members that crashed
        self._connection = connection
        self._forget = forget  # the broker's: stop tracking this once closed
        self._hub = connection.hub
        self.topic = topic
        self.group = group
        self._owner = owner
        self._epoch = connection.epoch
        self._closed = False

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._check()
            messages, next_due, expired = self._hub.take(
                self.topic, self.group, self._owner, max_messages
            )
            self.taken_over += expired
            remaining = deadline - loop.time()
            if messages or remaining <= 0 or max_messages <= 0:
                return messages  # fetch(0, _) only extends the leases: nothing to wait for
            if next_due is not None:
                remaining = min(remaining, max(0.0, next_due - self._hub.clock()))
            # Look again within half a lease: each take extends what this member holds.
            remaining = min(remaining, self._hub.lease / 2)
            waiter: asyncio.Future[None] = loop.create_future()
            waiters = self._hub.topic(self.topic).waiters
            waiters.append(waiter)
            timer = loop.call_later(remaining, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                if waiter in waiters:  # timed out: no publish came to take it away
                    waiters.remove(waiter)

    async def settle(
        self,
        acks: Sequence[Message],
        requeues: Sequence[tuple[Message, float]],
        deads: Sequence[tuple[Message, str]],
    ) -> None:
        self._check()
        self._hub.settle(self.topic, self.group, self._owner, acks, requeues, deads)

    async def lag(self) -> Lag:
        self._check()
        return Lag(total=self._hub.lag(self.topic, self.group))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._forget(self)
        self._hub.release(self.topic, self.group, self._owner, count_attempt=False)

    def lost(self) -> None:
        """The connection dropped: what this member held goes back with the attempt counted."""
        self._closed = True
        self._hub.release(self.topic, self.group, self._owner, count_attempt=True)

    def _check(self) -> None:
        if self._closed:
            raise BrokerUnavailable(
                f"{self._connection.url}: subscription to {self.topic!r} is closed"
            )
        self._connection.check(self._epoch)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
