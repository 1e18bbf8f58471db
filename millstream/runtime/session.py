"""One connected stretch of a consumer's life: fetch, dispatch, settle.

A session lives from a successful ``subscribe`` until the consumer stops or
the connection is lost. Everything it holds (in-flight handlers, unsettled
outcomes) ends with it: on a graceful stop it drains and flushes, on a lost
connection it lets handlers finish and leaves redelivery to the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from millstream.brokers.base import Subscription
from millstream.errors import BrokerError
from millstream.message import Message
from millstream.retry import Requeue
from millstream.runtime.dispatcher import Dispatcher
from millstream.runtime.settler import Settler

if TYPE_CHECKING:
    from millstream.runtime.consumer import ConsumerRuntime

__all__ = ["Session"]

log = logging.getLogger("millstream.runtime")

# How often a fetch loop that is not fetching (paused, or full) still calls
# fetch(0, 0), so leases of messages in slow handlers do not run out.
_KEEPALIVE = 0.25


class Session:
    """Fetch loop, dispatcher and settler over one subscription."""

    def __init__(self, consumer: ConsumerRuntime, subscription: Subscription) -> None:
        settings = consumer.settings
        self.consumer = consumer
        self.subscription = subscription
        self.held = 0  # fetched and not yet settled: what max_inflight bounds
        self._room = asyncio.Event()
        self.settler = Settler(
            subscription,
            batch=settings.settle_batch,
            interval=settings.settle_interval,
            on_settled=self._settled,
        )
        self.dispatcher = Dispatcher(
            self._process, consumer.key_of, consumer.concurrency, consumer.name
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set (drain and return) or the broker fails (raise)."""
        fetch = asyncio.create_task(
            self._fetch_loop(), name=f"millstream:{self.consumer.name}:fetch"
        )
        settle = asyncio.create_task(
            self.settler.run(), name=f"millstream:{self.consumer.name}:settle"
        )
        stop = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait({fetch, settle, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            await _cancel(fetch)
        failure = None
        if settle.done() and not settle.cancelled():
            failure = settle.exception()
        if fetch.done() and not fetch.cancelled() and fetch.exception() is not None:
            failure = fetch.exception()
        await self._finish(settle, graceful=failure is None)
        if failure is not None:
            raise failure

    async def _finish(self, settle: asyncio.Task[None], *, graceful: bool) -> None:
        consumer = self.consumer
        timeout = consumer.settings.drain_timeout
        if not await self.dispatcher.drain(timeout):
            log.warning(
                "consumer %s: %d handler(s) still running after drain_timeout=%ss; "
                "cancelling them, their messages will be redelivered",
                consumer.name,
                self.dispatcher.running,
                timeout,
            )
        await self.dispatcher.stop()
        self.settler.close()
        if not settle.done():
            try:
                await settle
            except Exception as exc:
                level = logging.WARNING if graceful else logging.DEBUG
                log.log(level, "consumer %s: final settle failed: %s", consumer.name, exc)
        with contextlib.suppress(BrokerError):
            await self.subscription.close()

    async def _fetch_loop(self) -> None:
        consumer = self.consumer
        settings = consumer.settings
        fetch = self.subscription.fetch
        while True:
            if consumer.paused:
                await self._idle(consumer.wait_resumed())
                continue
            room = consumer.max_inflight - self.held
            if room <= 0:
                self.settler.flush_now()
                self._room.clear()
                await self._idle(self._room.wait())
                continue
            messages = await fetch(min(room, consumer.prefetch), settings.poll_timeout)
            consumer.stats.last_poll = time.time()
            if messages:
                self.held += len(messages)
                consumer.stats.consumed += len(messages)
                self.dispatcher.submit(messages)

    async def _idle(self, until: Coroutine[Any, Any, Any]) -> None:
        """Wait for ``until`` while not fetching, keeping held messages alive.

        Brokers with leases extend them on every fetch; ``fetch(0, 0)`` takes
        nothing and only does that, so slow handlers keep their messages
        while the loop is paused or full.
        """
        waiter = asyncio.ensure_future(until)
        try:
            while not waiter.done():
                done, _ = await asyncio.wait({waiter}, timeout=_KEEPALIVE)
                if not done:
                    await self.subscription.fetch(0, 0)
        finally:
            waiter.cancel()

    async def _process(self, message: Message) -> None:
        consumer = self.consumer
        try:
            await consumer.invoke(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = consumer.retry.classify(exc, message.attempt)
            if isinstance(outcome, Requeue):
                consumer.stats.retried += 1
                log.warning(
                    "consumer %s: message %s failed on attempt %d, retrying in %.2fs: %s",
                    consumer.name,
                    message.id,
                    message.attempt,
                    outcome.delay,
                    exc,
                )
                self.settler.retry(message, outcome.delay)
            else:
                consumer.stats.dead += 1
                log.error(
                    "consumer %s: message %s dead-lettered on attempt %d: %s",
                    consumer.name,
                    message.id,
                    message.attempt,
                    outcome.reason,
                )
                self.settler.dead(message, outcome.reason)
        else:
            consumer.stats.acked += 1
            self.settler.ack(message)

    def _settled(self, count: int) -> None:
        self.held -= count
        self._room.set()


async def _cancel(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
