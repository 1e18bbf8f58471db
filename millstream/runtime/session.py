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
from millstream.retry import Dead, Requeue, describe
from millstream.runtime.attempts import ACKED
from millstream.runtime.dispatcher import Dispatcher
from millstream.runtime.settler import Settled, Settler
from millstream.runtime.tasks import cancel_and_wait

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
        self.settled = 0  # outcomes the broker accepted: proof the session works
        self.started_at = time.monotonic()
        self._settled_again = 0  # redeliveries whose lost outcome was applied again
        self._room = asyncio.Event()
        self.settler = Settler(
            subscription,
            batch=settings.settle_batch,
            interval=settings.settle_interval,
            on_settled=self._settled,
        )
        self.dispatcher = Dispatcher(
            consumer.invoke, self, consumer.key_of, consumer.concurrency, consumer.name
        )

    def proved_itself(self) -> bool:
        """The broker accepted outcomes, or the session outlived a full reconnect backoff."""
        lived = time.monotonic() - self.started_at
        return self.settled > 0 or lived > self.consumer.settings.reconnect_max_backoff

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set (drain and return) or the broker fails (raise).

        Cancelled from outside (a cancelled ``stop()``), it still cleans up:
        running handlers are cancelled rather than drained, outcomes are
        flushed and the subscription is closed, then the cancellation goes on.
        """
        name = self.consumer.name
        fetch = asyncio.create_task(self._fetch_loop(), name=f"millstream:{name}:fetch")
        settle = asyncio.create_task(self.settler.run(), name=f"millstream:{name}:settle")
        stop = asyncio.create_task(stopping.wait())
        cancelled = False
        try:
            await asyncio.wait({fetch, settle, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            cancelled = True
        stop.cancel()
        try:
            await cancel_and_wait(fetch)
        except asyncio.CancelledError:
            cancelled = True
        failure = None
        if settle.done() and not settle.cancelled():
            failure = settle.exception()
        if fetch.done() and not fetch.cancelled() and fetch.exception() is not None:
            failure = fetch.exception()
        finish = asyncio.ensure_future(self._finish(settle, drain=not cancelled))
        try:
            await asyncio.shield(finish)
        except asyncio.CancelledError:
            cancelled = True
            self.dispatcher.abandon_drain()
            await asyncio.shield(finish)
        if cancelled:
            raise asyncio.CancelledError
        if failure is not None:
            raise failure

    async def _finish(self, settle: asyncio.Task[None], *, drain: bool) -> None:
        consumer = self.consumer
        timeout = consumer.settings.drain_timeout if drain else 0.0
        # Leases must outlive the drain, or a slow handler's message goes to
        # another member while it still runs.
        keepalive = asyncio.create_task(self._keepalive())
        try:
            if not await self.dispatcher.drain(timeout) and drain:
                log.warning(
                    "consumer %s: %d handler(s) still running after drain_timeout=%ss; "
                    "cancelling them, their messages will be redelivered",
                    consumer.name,
                    self.dispatcher.running,
                    timeout,
                )
            consumer.uncounted.remember(await self.dispatcher.stop())
            self.settler.close()
            try:
                await settle  # done or not: this also retrieves an exception it ended with
            except Exception as exc:
                log.warning("consumer %s: final settle failed: %s", consumer.name, exc)
            # Outcomes that came after the settler failed were never sent: the broker
            # redelivers those messages, and the handled ones were no failed attempt.
            self._settled(self.settler.take_pending(), False)
        finally:
            await cancel_and_wait(keepalive)
            with contextlib.suppress(BrokerError):
                await self.subscription.close()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(_KEEPALIVE)
            with contextlib.suppress(BrokerError):
                await self.subscription.fetch(0, 0)

    async def _fetch_loop(self) -> None:
        consumer = self.consumer
        settings = consumer.settings
        fetch = self.subscription.fetch
        while True:
            if consumer.paused:
                await self._idle(consumer.wait_resumed())
                continue
            limit = consumer.max_inflight
            room = limit - self.held
            if room < max(1, min(consumer.prefetch, limit) // 2):
                # Not for a sliver: a small fetch costs a round trip like a
                # whole one. Held messages settle and make room meanwhile.
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
                self._submit(messages)

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

    def _submit(self, messages: list[Message]) -> None:
        uncounted = self.consumer.uncounted
        if uncounted and (decided := uncounted.correct(messages)):
            messages = self._settle_again(messages, decided)
        limit = self.consumer.retry.attempts
        overdue = [message for message in messages if message.attempt > limit]
        if overdue:
            # Delivered more often than they may be tried without ever getting an
            # outcome: whatever handles them takes the process down with it.
            for message in overdue:
                self._bury(
                    message,
                    f"delivered {message.attempt} times without an outcome; the process "
                    "handling it may have crashed or been killed each time",
                )
            messages = [message for message in messages if message.attempt <= limit]
        self.dispatcher.submit(messages)

    def _settle_again(
        self, messages: list[Message], decided: list[tuple[Message, str]]
    ) -> list[Message]:
        """Apply again the outcomes a lost connection swallowed; returns the rest to run."""
        if not self._settled_again:
            log.info(
                "consumer %s: redelivered messages already had an outcome before a lost "
                "connection swallowed it; settling them again without handling them",
                self.consumer.name,
            )
        self._settled_again += len(decided)
        for message, outcome in decided:
            if outcome == ACKED:
                self.succeeded(message)
            else:
                self._bury(message, outcome)
        again = {id(message) for message, _ in decided}
        return [message for message in messages if id(message) not in again]

    # -- Outcomes, reported by the dispatcher ---------------------------------

    def succeeded(self, message: Message) -> None:
        self.consumer.stats.acked += 1
        self.settler.ack(message)

    def failed(self, message: Message, exc: BaseException) -> None:
        consumer = self.consumer
        try:
            outcome = consumer.retry.classify(exc, message.attempt)
        except Exception as error:  # a broken retry_on/dead_on must not strand the message
            outcome = Dead(f"retry policy failed ({error!r}) on {describe(exc)}")
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
            self._bury(message, outcome.reason)

    def _bury(self, message: Message, reason: str) -> None:
        consumer = self.consumer
        consumer.stats.dead += 1
        log.error(
            "consumer %s: message %s dead-lettered on attempt %d: %s",
            consumer.name,
            message.id,
            message.attempt,
            reason,
        )
        self.settler.dead(message, reason)

    def unkeyable(self, message: Message, exc: Exception) -> None:
        """The consumer's ``key=`` failed on this message: it can never be ordered."""
        self._bury(message, f"key function failed: {describe(exc)}")

    def _settled(self, batch: Settled, ok: bool) -> None:
        self.held -= batch.size
        uncounted = self.consumer.uncounted
        if ok:
            self.settled += batch.size
            if uncounted:
                uncounted.settled(batch.acks)
                uncounted.settled(message for message, _ in batch.deads)
        else:
            # Decided, but the outcome did not reach the broker: the redelivery that
            # follows is no attempt; the outcome is applied to it again.
            uncounted.remember(batch.acks, ACKED)
            for message, reason in batch.deads:
                uncounted.remember((message,), reason)
        self._room.set()
