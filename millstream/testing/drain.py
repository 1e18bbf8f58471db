"""``Drain``: wait until an app has nothing in flight, ready or due, or say what is stuck.

On the memory broker the hub says exactly what each consumer's group has
left (unread, ready, leased, delayed), and delayed retries wait on a
:class:`ManualClock`: when nothing else is left, the clock jumps to the
next due time, so backoffs cost no real time. On a real broker the same
questions are asked of each consumer's lag, polled in real time.

Settled means: no consumer holds a message, no group has one left, the
outbox has nothing unsent, and nothing moved between two looks in a row
(no publish, fetch or outcome), so work handed from one part to another
between the looks is not missed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from millstream.app import App
from millstream.brokers.base import DeadLetter
from millstream.brokers.memory.hub import MemoryHub
from millstream.testing.clock import ManualClock
from millstream.testing.recorder import Recorder

__all__ = ["Drain", "DrainTimeout"]

_MEMORY_POLL = 0.001
_BROKER_POLL = 0.02


class DrainTimeout(AssertionError):
    """``drain()`` gave up: the app did not settle within its timeout. The message says what
    was left: handlers still running (consumer, message id, for how long) and backlogs."""


@dataclass
class _Look:
    left: list[str] = field(default_factory=list)
    """What is not settled, each worded for the failure message."""
    next_due: float | None = None
    progress: tuple[int, ...] = ()


class Drain:
    """Drains ``app``: on the memory broker's ``hub`` and its ``clock`` when given, else by
    polling each consumer's lag."""

    def __init__(
        self, app: App, recorder: Recorder, memory: tuple[MemoryHub, ManualClock] | None = None
    ) -> None:
        self._app = app
        self._recorder = recorder
        self._memory = memory
        self.dead_letters: dict[tuple[str, str], list[DeadLetter]] = {}
        """On a real broker: each consumer group's dead letters, as the last drain read them."""

    async def __call__(self, timeout: float) -> None:
        """Return once settled; raise ``DrainTimeout`` after ``timeout`` seconds (real time)."""
        started = time.monotonic()
        quiet: tuple[int, ...] | None = None  # the progress seen at the last settled look
        while True:
            look = await self._look()
            if not look.left:
                if look.next_due is not None and self._memory is not None:
                    hub, clock = self._memory
                    clock.advance_to(look.next_due)
                    hub.wake()
                    quiet = None
                    continue
                if look.progress == quiet:
                    break
                quiet = look.progress
            else:
                quiet = None
            if time.monotonic() - started > timeout:
                raise DrainTimeout(self._stuck(look, timeout))
            await asyncio.sleep(_MEMORY_POLL if self._memory is not None else _BROKER_POLL)
        if self._memory is None:
            await self._read_dead_letters()

    async def _look(self) -> _Look:
        # The outbox first: rows it relays after this count show up in the groups below.
        look = _Look()
        store = self._app.opened_store if self._app.started else None
        if store is not None:
            unsent = await store.outbox_pending()
            if unsent:
                look.left.append(f"the outbox has {unsent} message(s) not yet published")
        progress = [self._recorder.publishes]
        for name, consumer in self._app.consumers.items():
            stats = consumer.stats
            progress += [stats.consumed, stats.acked, stats.retried, stats.dead]
            where = f"consumer {name!r} ({consumer.state.value})"
            if consumer.inflight:
                look.left.append(f"{where} holds {consumer.inflight} message(s) not yet settled")
            await self._backlog(look, where, consumer.spec.topic, consumer.spec.group, name)
        look.progress = tuple(progress)
        return look

    async def _backlog(self, look: _Look, where: str, topic: str, group: str, name: str) -> None:
        on = f"on topic {topic!r} for group {group!r}"
        if self._memory is not None:
            backlog = self._memory[0].backlog(topic, group)
            if backlog.active:
                look.left.append(
                    f"{where} has {backlog.unread} unread, {backlog.ready} ready and "
                    f"{backlog.leased} leased message(s) {on}"
                )
            due = backlog.next_due
            if due is not None and (look.next_due is None or due < look.next_due):
                look.next_due = due
            return
        lag = await self._app.consumers[name].lag()
        if lag is None:  # not connected: what its group holds is unknown, so not settled
            look.left.append(f"{where} cannot tell its lag {on}: it is not connected")
        elif lag.total:
            look.left.append(f"{where} has a lag of {lag.total} message(s) {on}")

    def _stuck(self, look: _Look, timeout: float) -> str:
        now = time.monotonic()
        lines = [
            f"consumer {each.consumer!r} is still handling message {each.message_id!r} "
            f"(attempt {each.attempt}), for {now - each.since:.1f}s"
            for each in self._recorder.running()
        ]
        lines += look.left
        return f"drain() did not settle within {timeout}s:\n  " + "\n  ".join(lines)

    async def _read_dead_letters(self) -> None:
        letters: dict[tuple[str, str], list[DeadLetter]] = {}
        for consumer in self._app.consumers.values():
            where = (consumer.spec.topic, consumer.spec.group)
            if where not in letters:
                queue = await self._app.dead_letters(*where)
                newest_first = await queue.list(limit=max(1, await queue.count()))
                letters[where] = newest_first[::-1]
        self.dead_letters = letters
