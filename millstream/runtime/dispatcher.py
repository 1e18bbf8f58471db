"""Worker lanes: bounded concurrency with per-key order.

Messages wait in one ready queue that ``concurrency`` long-lived workers
drain. A keyed message whose key is already being handled waits behind it in
that key's queue and becomes ready when its predecessor finishes, so
messages with one key are handled one at a time in fetch order while other
keys proceed; a slow key never blocks an unrelated one. No task, lock or
future is made per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from millstream.message import Message
from millstream.runtime.handler import Invoke
from millstream.runtime.stats import HandlerTimes
from millstream.runtime.tasks import cancel_and_wait

__all__ = ["Dispatcher", "KeyOf", "Outcomes"]

log = logging.getLogger("millstream.runtime")

KeyOf = Callable[[Message], str | None]
"""Reads a message's ordering key; ``None``: no order to keep."""

# Handlers that do not suspend run at most this long, all workers together,
# before the loop gets to poll its sockets again: a burst of instant handlers
# cannot starve the HTTP side. By time, not by count: a yield costs a loop
# turn, which instant handlers must not pay often. Shared, not per worker:
# eight workers holding 0.5 ms each would hold the loop for 4 ms.
_HOLD = 0.0005


class _Worker:
    __slots__ = ("retired", "task")

    def __init__(self) -> None:
        self.retired = False
        self.task: asyncio.Task[None] | None = None


class Outcomes(Protocol):
    """What becomes of each message: the dispatcher only reports, the session settles."""

    def succeeded(self, message: Message) -> None: ...

    def failed(self, message: Message, exc: BaseException) -> None: ...

    def unkeyable(self, message: Message, exc: Exception) -> None:
        """The key function failed on ``message``: it never enters a lane."""


class Dispatcher:
    """Runs ``invoke`` over submitted messages on ``concurrency`` workers.

    Each outcome goes to ``outcomes`` the moment ``invoke`` returns or raises;
    if reporting it raises, the error is logged and the message left
    unsettled. ``running`` counts the handlers started and not finished.
    How long each call took goes to ``times`` (plain numbers the metrics
    scrape reads, cheaper per message than a timing link in the chain).
    """

    def __init__(
        self,
        invoke: Invoke,
        outcomes: Outcomes,
        key_of: KeyOf,
        concurrency: int,
        name: str,
        times: HandlerTimes | None = None,
    ) -> None:
        self._invoke = invoke
        self._times = times if times is not None else HandlerTimes()
        self._outcomes = outcomes
        self._key_of = key_of
        self._name = name
        self._ready: deque[tuple[Message, str | None]] = deque()
        self._waiting: dict[str, deque[Message]] = {}
        self._idle: deque[asyncio.Future[None]] = deque()
        self._workers: list[_Worker] = []
        self._settled: asyncio.Event = asyncio.Event()
        self._settled.set()
        self._draining = False
        self.running = 0
        self.unstarted = 0
        """Messages submitted and not yet taken by a worker (ready, or behind their key)."""
        self.concurrency = concurrency
        """Workers that take messages (retired ones only finish theirs)."""
        self._turn = 0  # renewals of the shared hold; a worker that yields renews it
        self._turn_started = 0.0
        self.set_concurrency(concurrency)

    def submit(self, messages: Iterable[Message]) -> None:
        """Queue messages for processing, in order. Never blocks."""
        key_of = self._key_of
        waiting = self._waiting
        ready = self._ready
        for message in messages:
            try:
                key = key_of(message)
            except Exception as exc:
                self._outcomes.unkeyable(message, exc)
                continue
            if key is None:
                ready.append((message, None))
            elif key in waiting:
                waiting[key].append(message)
            else:
                waiting[key] = deque()
                ready.append((message, key))
            self.unstarted += 1
        self._wake(len(ready))

    def set_concurrency(self, concurrency: int) -> None:
        """Grow or shrink the worker pool; a retired worker finishes its message first."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        active = [w for w in self._workers if not w.retired]
        for worker in active[concurrency:]:
            worker.retired = True
        for _ in range(concurrency - len(active)):
            worker = _Worker()
            worker.task = asyncio.get_running_loop().create_task(
                self._work(worker), name=f"millstream:{self._name}:worker"
            )
            self._workers.append(worker)
        self._workers = [w for w in self._workers if not w.retired or not _finished(w)]
        self._wake(len(self._idle))

    async def drain(self, timeout: float) -> bool:
        """Start nothing new and wait for running handlers; ``False`` if ``timeout`` passed.

        Messages not yet started stay queued for ``stop`` to hand back: on a
        stop they are released to the broker rather than handled late.
        """
        self._draining = True
        self._wake(len(self._idle))
        if not self.running:
            return True
        self._settled.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._settled.wait()
        except TimeoutError:
            return False
        return not self.running

    def abandon_drain(self) -> None:
        """End a ``drain`` in progress now, as if its timeout had passed."""
        self._settled.set()

    async def stop(self) -> list[Message]:
        """Cancel the workers; returns the messages that were never started."""
        await cancel_and_wait(*(w.task for w in self._workers if w.task is not None))
        self._workers.clear()
        unstarted = [message for message, _ in self._ready]
        for queue in self._waiting.values():
            unstarted.extend(queue)
        self._ready.clear()
        self._waiting.clear()
        self.unstarted = 0
        return unstarted

    def _wake(self, count: int) -> None:
        idle = self._idle
        while count > 0 and idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    async def _work(self, worker: _Worker) -> None:
        ready = self._ready
        invoke = self._invoke
        outcomes = self._outcomes
        loop = asyncio.get_running_loop()
        clock = time.monotonic
        ok_times, error_times = self._times.ok, self._times.error
        while not worker.retired and not self._draining:
            # The reading that checks the hold is also the handler's start time.
            if not ready or (started := clock()) - self._turn_started >= _HOLD:
                # Idle, or the loop has been held long enough: wait (and let it
                # poll). The first worker back since (the turn not renewed
                # meanwhile) starts the next turn; others find it taken.
                turn = self._turn
                if ready:
                    await asyncio.sleep(0)
                else:
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._idle.append(waiter)
                    await waiter
                if self._turn == turn:
                    self._turn += 1
                    self._turn_started = clock()
                continue
            message, key = ready.popleft()
            self.unstarted -= 1
            self.running += 1
            try:
                try:
                    await invoke(message)
                except asyncio.CancelledError as exc:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # the runtime is stopping this worker
                    error_times.observe(clock() - started)
                    outcomes.failed(message, exc)  # the handler's own: a failure like others
                except Exception as exc:
                    error_times.observe(clock() - started)
                    outcomes.failed(message, exc)
                else:
                    ok_times.observe(clock() - started)
                    outcomes.succeeded(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consumer %s: settling message %s failed", self._name, message.id)
            finally:
                self.running -= 1
                self._finish(key)
        # A retired worker may have been woken for work it will not take.
        self._wake(len(ready))

    def _finish(self, key: str | None) -> None:
        if key is not None:
            followers = self._waiting[key]
            if followers:
                self._ready.append((followers.popleft(), key))
                self._wake(1)
            else:
                del self._waiting[key]
        if self._draining and not self.running:
            self._settled.set()


def _finished(worker: _Worker) -> bool:
    return worker.task is not None and worker.task.done()
