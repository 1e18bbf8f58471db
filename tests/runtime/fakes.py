"""A subscription in memory that records what the runtime asks of it, for unit tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import Sequence

from millstream.brokers.base import Lag
from millstream.message import Message


def message(id: str, key: str | None = None, attempt: int = 1) -> Message:
    return Message(id=id, topic="t", payload=b"{}", key=key, attempt=attempt)


class Gated:
    """A handler that waits, per message id, until the test lets it finish."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.started: list[str] = []
        self.running: set[str] = set()
        self.most_running = 0
        self.cancelled: list[str] = []
        self._open = False

    async def __call__(self, message: Message) -> None:
        self.started.append(message.id)
        self.running.add(message.id)
        self.most_running = max(self.most_running, len(self.running))
        try:
            if not self._open:
                await self.gates[message.id].wait()
        except asyncio.CancelledError:
            self.cancelled.append(message.id)
            raise
        finally:
            self.running.discard(message.id)

    def release(self, *ids: str) -> None:
        for id in ids:
            self.gates[id].set()

    def release_all(self) -> None:
        """Let every handler finish, those to come included."""
        self._open = True
        for gate in self.gates.values():
            gate.set()


class FakeSubscription:
    """Hands out what was ``offer``-ed; records fetches, settles and the close.

    ``most_held`` is the most messages it had handed out and not yet seen
    settled: what a session's ``max_inflight`` must bound. ``fail_fetch`` and
    ``fail_settle`` make the next calls raise, as a lost connection would.
    """

    def __init__(self) -> None:
        self.taken_over = 0
        self.waiting: deque[Message] = deque()
        self.asked: list[int] = []
        """``max_messages`` of every fetch that could take something (not keepalives)."""
        self.keepalives = 0
        self.acks: list[Message] = []
        self.requeues: list[tuple[Message, float]] = []
        self.deads: list[tuple[Message, str]] = []
        self.settles = 0
        self.events: list[str] = []
        """``settle`` and ``close``, in the order they came."""
        self.closed = asyncio.Event()
        self.settled = asyncio.Event()
        """Set by every settle that went through; clear it to wait for the next."""
        self.held = 0
        self.most_held = 0
        self.settling = 0
        self.most_settling = 0
        self.settle_gate: asyncio.Event | None = None
        """When given, every settle waits for it before it goes through."""
        self._fetch_error: BaseException | None = None
        self._settle_error: BaseException | None = None
        self._arrived = asyncio.Event()
        self._kept_alive = asyncio.Event()

    def offer(self, *messages: Message) -> None:
        self.waiting.extend(messages)
        self._arrived.set()

    def fail_fetch(self, error: BaseException) -> None:
        self._fetch_error = error
        self._arrived.set()

    def fail_settle(self, error: BaseException) -> None:
        self._settle_error = error

    async def kept_alive(self) -> None:
        """Return at the next ``fetch(0, 0)``."""
        self._kept_alive.clear()
        await self._kept_alive.wait()

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        if self._fetch_error is not None:
            raise self._fetch_error
        if max_messages == 0:
            self.keepalives += 1
            self._kept_alive.set()
            return []
        self.asked.append(max_messages)
        if not self.waiting:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            if self._fetch_error is not None:
                raise self._fetch_error
        taken = [self.waiting.popleft() for _ in range(min(max_messages, len(self.waiting)))]
        self.held += len(taken)
        self.most_held = max(self.most_held, self.held)
        return taken

    async def settle(
        self,
        acks: Sequence[Message],
        requeues: Sequence[tuple[Message, float]],
        deads: Sequence[tuple[Message, str]],
    ) -> None:
        self.settling += 1
        self.most_settling = max(self.most_settling, self.settling)
        try:
            if self.settle_gate is not None:
                await self.settle_gate.wait()
            if self._settle_error is not None:
                raise self._settle_error
        finally:
            self.settling -= 1
        self.events.append("settle")
        self.settles += 1
        self.acks.extend(acks)
        self.requeues.extend(requeues)
        self.deads.extend(deads)
        self.held -= len(acks) + len(requeues) + len(deads)
        self.settled.set()

    async def lag(self) -> Lag | None:
        return Lag(total=len(self.waiting))

    async def close(self) -> None:
        self.events.append("close")
        self.closed.set()

    def acked_ids(self) -> list[str]:
        return [m.id for m in self.acks]
