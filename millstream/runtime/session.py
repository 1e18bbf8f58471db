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
from dataclasses import dataclass
from typing import Any

from millstream.brokers.base import Lag, Subscription
from millstream.errors import BrokerError
from millstream.message import Message
from millstream.retry import Dead, Requeue, RetryPolicy, describe
from millstream.runtime.attempts import ACKED, UncountedDeliveries
from millstream.runtime.dispatcher import Dispatcher, KeyOf
from millstream.runtime.handler import Invoke
from millstream.runtime.pace import HORIZON, Pace
from millstream.runtime.settler import Settled, Settler
from millstream.runtime.stats import ConsumerStats, Failure
from millstream.runtime.tasks import cancel_and_wait

__all__ = ["Limits", "Session"]

log = logging.getLogger("millstream.runtime")

# How often a fetch loop that is not fetching (paused, or full) still calls
# fetch(0, 0), so leases of messages in slow handlers do not run out.
_KEEPALIVE = 0.25


@dataclass(frozen=True, slots=True)
class Limits:
    """How much a session holds at once and how it paces fetching and settling."""

    concurrency: int
    """Handlers running at once."""
    max_inflight: int
    """Messages fetched and not yet settled, at most."""
    prefetch: int
    """Messages asked for in one fetch, at most."""
    poll_timeout: float
    """Seconds one fetch waits for the first message."""
    settle_batch: int
    """Outcomes that make the settler flush at once."""
    settle_interval: float
    """Seconds an outcome waits for others to share its round trip, at most."""
    drain_timeout: float
    """Seconds a graceful stop waits for running handlers before cancelling them."""


class Session:
    """Fetch loop, dispatcher and settler over one subscription.

    Messages go to ``invoke`` on ``limits.concurrency`` workers, in order per
    ``key_of``; what becomes of each follows ``retry``. ``stats`` and
    ``uncounted`` belong to the consumer and outlive the session. Fetching
    waits while ``resumed`` is clear.
    """

    def __init__(
        self,
        subscription: Subscription,
        *,
        name: str,
        invoke: Invoke,
        key_of: KeyOf,
        retry: RetryPolicy,
        limits: Limits,
        stats: ConsumerStats,
        uncounted: UncountedDeliveries,
        resumed: asyncio.Event,
    ) -> None:
        self.name = name
        self.inflight = 0
        """Messages fetched and not yet settled: what ``max_inflight`` bounds."""
        self._subscription = subscription
        self._retry = retry
        self._limits = limits
        self._max_inflight = limits.max_inflight
        self._stats = stats
        self._uncounted = uncounted
        self._resumed = resumed
        self._settled_count = 0  # outcomes the broker accepted: proof the session works
        self._settled_again = 0  # redeliveries whose lost outcome was applied again
        self._started_at = time.monotonic()
        self._room = asyncio.Event()
        self._settler = Settler(
            subscription,
            batch=limits.settle_batch,
            interval=limits.settle_interval,
            on_settled=self._settled,
        )
        self._dispatcher = Dispatcher(
            invoke, self, key_of, limits.concurrency, name, stats.handler_times
        )

    @property
    def taken_over(self) -> int:
        """Messages the subscription took over from members that crashed."""
        return self._subscription.taken_over

    async def lag(self) -> Lag | None:
        """The group's backlog, as the subscription tells it."""
        return await self._subscription.lag()

    def set_concurrency(self, concurrency: int, max_inflight: int) -> None:
        """Run ``concurrency`` handlers at once and hold up to ``max_inflight`` messages."""
        self._dispatcher.set_concurrency(concurrency)
        self._max_inflight = max_inflight
        self._room.set()  # a fetch loop waiting for room may have some now

    def proved_itself(self, patience: float) -> bool:
        """The broker accepted outcomes, or the session lived longer than ``patience``."""
        lived = time.monotonic() - self._started_at
        return self._settled_count > 0 or lived > patience

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set (drain and return) or the broker fails (raise).

        Cancelled from outside (a cancelled ``stop()``), it still cleans up:
        running handlers are cancelled rather than drained, outcomes are
        flushed and the subscription is closed, then the cancellation goes on.
        """
        name = self.name
        fetch = asyncio.create_task(self._fetch_loop(), name=f"millstream:{name}:fetch")
        settle = asyncio.create_task(self._settler.run(), name=f"millstream:{name}:settle")
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
            self._dispatcher.abandon_drain()
            await asyncio.shield(finish)
        if cancelled:
            raise asyncio.CancelledError
        if failure is not None:
            raise failure

    async def _finish(self, settle: asyncio.Task[None], *, drain: bool) -> None:
        dispatcher = self._dispatcher
        timeout = self._limits.drain_timeout if drain else 0.0
        # Leases must outlive the drain, or a slow handler's message goes to
        # another member while it still runs.
        keepalive = asyncio.create_task(self._keepalive())
        try:
            if not await dispatcher.drain(timeout) and drain:
                log.warning(
                    "consumer %s: %d handler(s) still running after drain_timeout=%ss; "
                    "cancelling them, their messages will be redelivered",
                    self.name,
                    dispatcher.running,
                    timeout,
                )
            self._uncounted.remember(await dispatcher.stop())
            self._settler.close()
            try:
                await settle  # done or not: this also retrieves an exception it ended with
            except Exception as exc:
                log.warning("consumer %s: final settle failed: %s", self.name, exc)
            # Outcomes that came after the settler failed were never sent: the broker
            # redelivers those messages, and the handled ones were no failed attempt.
            self._settled(self._settler.take_pending(), False)
        finally:
            await cancel_and_wait(keepalive)
            with contextlib.suppress(BrokerError):
                await self._subscription.close()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(_KEEPALIVE)
            with contextlib.suppress(BrokerError):
                await self._subscription.fetch(0, 0)

    async def _fetch_loop(self) -> None:
        fetch = self._subscription.fetch
        resumed = self._resumed
        prefetch = self._limits.prefetch
        poll_timeout = self._limits.poll_timeout
        stats = self._stats
        pace = Pace(stats.handler_times)
        while True:
            if not resumed.is_set():
                await self._idle(resumed.wait())
                continue
            # Held messages stay under max_inflight; those not yet started stay under what
            # the workers can start soon (pace.py), so a burst spreads over the group.
            # Handled messages waiting to settle do not count there: a member keeps
            # asking (and finds a broker gone silent) while its settles hang.
            dispatcher = self._dispatcher
            startable = pace.startable(dispatcher.concurrency)
            inflight_room = self._max_inflight - self.inflight
            paced_room = startable - dispatcher.unstarted - dispatcher.running
            room = min(inflight_room, paced_room)
            if room < max(1, min(prefetch, self._max_inflight, startable) // 2):
                # Not for a sliver: a small fetch costs a round trip like a
                # whole one. Held messages settle and make room meanwhile.
                if inflight_room <= 0:
                    self._settler.flush_now()
                self._room.clear()
                room_made: Coroutine[Any, Any, Any] = self._room.wait()
                if paced_room < inflight_room:  # room comes as workers start messages
                    room_made = _within(room_made, HORIZON)
                await self._idle(room_made)
                continue
            messages = await fetch(min(room, prefetch), poll_timeout)
            stats.last_poll = time.time()
            if messages:
                self.inflight += len(messages)
                stats.consumed += len(messages)
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
                    await self._subscription.fetch(0, 0)
        finally:
            waiter.cancel()

    def _submit(self, messages: list[Message]) -> None:
        uncounted = self._uncounted
        if uncounted and (decided := uncounted.correct(messages)):
            messages = self._settle_again(messages, decided)
        limit = self._retry.attempts
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
        self._dispatcher.submit(messages)

    def _settle_again(
        self, messages: list[Message], decided: list[tuple[Message, str]]
    ) -> list[Message]:
        """Apply again the outcomes a lost connection swallowed; returns the rest to run."""
        if not self._settled_again:
            log.info(
                "consumer %s: redelivered messages already had an outcome before a lost "
                "connection swallowed it; settling them again without handling them",
                self.name,
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
        """The handler finished: ack ``message``."""
        self._stats.acked += 1
        self._settler.ack(message)

    def failed(self, message: Message, exc: BaseException) -> None:
        """The handler raised ``exc``: requeue or dead-letter ``message``, as the policy says."""
        self._stats.last_failure = Failure.of(exc, "handler")
        try:
            outcome = self._retry.classify(exc, message.attempt)
        except Exception as error:  # a broken retry_on/dead_on must not strand the message
            outcome = Dead(f"retry policy failed ({error!r}) on {describe(exc)}")
        if isinstance(outcome, Requeue):
            self._stats.retried += 1
            log.warning(
                "consumer %s: message %s failed on attempt %d, requeued for %.2fs: %s",
                self.name,
                message.id,
                message.attempt,
                outcome.delay,
                exc,
            )
            self._settler.requeue(message, outcome.delay)
        else:
            self._bury(message, outcome.reason)

    def _bury(self, message: Message, reason: str) -> None:
        self._stats.dead += 1
        log.error(
            "consumer %s: message %s dead-lettered on attempt %d: %s",
            self.name,
            message.id,
            message.attempt,
            reason,
        )
        self._settler.dead(message, reason)

    def unkeyable(self, message: Message, exc: Exception) -> None:
        """The consumer's ``key=`` failed on this message: it can never be ordered."""
        self._stats.last_failure = Failure.of(exc, "handler")
        self._bury(message, f"key function failed: {describe(exc)}")

    def _settled(self, batch: Settled, ok: bool) -> None:
        self.inflight -= batch.size
        uncounted = self._uncounted
        if ok:
            self._settled_count += batch.size
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


async def _within(waiting: Coroutine[Any, Any, Any], seconds: float) -> None:
    """``waiting``, or ``seconds``, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(waiting, seconds)
