"""``TestApp``: an app run, unchanged, on a test broker and a throw-away store, for its tests.

``async with TestApp(ms) as t`` swaps the app's broker for the memory
broker (on a clock the harness moves) and its store for SQLite in a
temporary file, through ``ms.running_on``; records what the app does
through links it adds; starts the app; and on exit stops it and gives it
back as it was, so the next test can use it again.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from millstream.brokers import connect
from millstream.brokers.base import Broker, DeadLetter
from millstream.brokers.memory.broker import MemoryBroker, MemoryHub
from millstream.message import OutgoingMessage, deliver_at, encode
from millstream.runtime.stats import ConsumerStats
from millstream.service import Millstream
from millstream.testing.clock import ManualClock
from millstream.testing.drain import Drain
from millstream.testing.recorder import Published, Recorder

if TYPE_CHECKING:
    import httpx
    from starlette.applications import Starlette
    from starlette.types import ASGIApp

__all__ = ["TestApp"]

HandlerOrName = str | Callable[..., Any]


class TestApp:
    """Runs ``ms`` for a test: ``async with TestApp(ms) as t:``.

    By default on the memory broker, with retries and leases on the
    harness's :class:`ManualClock` (``t.clock``), and on a SQLite store in
    a temporary file. ``broker_url=`` runs it on that broker instead
    (``drain`` then waits in real time), ``store_url=`` on that store
    (a PostgreSQL database of its own, say); other keyword arguments are
    settings for the run (``drain_timeout=1``). ``app=`` is the FastAPI
    (Starlette) app serving ``ms``: its lifespan starts and stops the
    consumers, once, and ``t.client()`` talks to it.
    """

    __test__ = False  # a harness, not a test class pytest should collect

    def __init__(
        self,
        ms: Millstream,
        *,
        app: Starlette | None = None,
        broker_url: str | None = None,
        store_url: str | None = None,
        **settings: Any,
    ) -> None:
        self.ms = ms
        self.app = app
        memory = None
        if broker_url is None:
            clock = ManualClock()
            memory = (MemoryHub(clock=clock), clock)
        self.hub: MemoryHub | None = memory[0] if memory else None
        """The memory broker's state (memory broker only)."""
        self.clock: ManualClock | None = memory[1] if memory else None
        """The clock retries and leases wait on (memory broker only); ``drain`` moves it."""
        self._broker_url = broker_url
        self._store_url = store_url
        self._settings = settings
        self._recorder = Recorder(ms.specs)
        self._drain = Drain(ms, self._recorder, memory)
        self._stack: contextlib.AsyncExitStack | None = None
        self._served: ASGIApp | None = None

    # -- running -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="millstream-test-"))
            store_url = self._store_url or f"sqlite:///{folder}/state.db"
            stack.enter_context(
                self.ms.running_on(self._broker(), store_url=store_url, **self._settings)
            )
            self._install(stack)
            if self.app is not None:
                await stack.enter_async_context(self.app.router.lifespan_context(self.app))
            if not self.ms.started:  # no app, or one whose lifespan does not run ms
                await self.ms.start()
                stack.push_async_callback(self.ms.stop)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def _broker(self) -> Broker:
        if self._broker_url is not None:
            return connect(self._broker_url)
        return MemoryBroker(self.hub)

    def _install(self, stack: contextlib.AsyncExitStack) -> None:
        """Add the recording links and start from empty caches; undone on exit."""
        ms, recorder = self.ms, self._recorder
        ms.add_link(recorder.outer)
        stack.callback(ms.remove_link, recorder.outer)
        ms.add_link(recorder.inner, innermost=True)
        stack.callback(ms.remove_link, recorder.inner)
        ms.add_publish_link(recorder.publish)
        stack.callback(ms.remove_publish_link, recorder.publish)
        # The caches outlive a test: what one test's store said must not answer the next.
        self._clear_caches()
        stack.callback(self._clear_caches)

    def _clear_caches(self) -> None:
        for cache in self.ms.caches.values():
            cache.clear()

    # -- driving -----------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float | None = None,
    ) -> str:
        """Publish ``value`` to ``topic`` as a producer outside the app would; returns its id.

        It goes through the app's publish chain, but is not listed in ``published``.
        With ``delay``, ``drain`` moves the clock on to when it is due.
        """
        out = OutgoingMessage(
            encode(value), key=key, headers=dict(headers or {}), deliver_at=deliver_at(delay)
        )
        self._recorder.own.add(out.id)
        await self.ms.publish_batch(topic, [out])
        return out.id

    async def drain(self, timeout: float = 10.0) -> None:
        """Return when nothing is in flight, ready or due, and the outbox is empty.

        On the memory broker, when only delayed retries are left the clock
        jumps to the next one, so backoffs take no real time; on a real
        broker, retries wait their real delay. Raises ``DrainTimeout``
        naming what is stuck (running handlers, backlogs) after
        ``timeout`` seconds of real time.
        """
        await self._drain(timeout)

    def client(self, app: ASGIApp | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` calling ``app`` (default: the ``app=`` given, else
        ``ms.fastapi()``) in process. Its lifespan is not run again: the consumers run
        already. Keyword arguments go to ``httpx.AsyncClient``."""
        import httpx  # a test dependency, not millstream's

        target = app or self.app or self._default_app()
        kwargs.setdefault("base_url", "http://testserver")
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=target), **kwargs)

    def _default_app(self) -> ASGIApp:
        if self._served is None:
            self._served = self.ms.fastapi()
        return self._served

    # -- what tests assert on ----------------------------------------------------

    def handled(self, consumer: HandlerOrName) -> int:
        """How many messages ``consumer`` (its handler or name) handled: its handler
        returned and the message was acked."""
        return self._recorder.record(self._name(consumer)).handled

    def calls(self, consumer: HandlerOrName) -> list[Any]:
        """The payload of each call of ``consumer``'s handler, decoded as the handler got
        it, failed calls included, in the order of the calls."""
        return list(self._recorder.record(self._name(consumer)).calls)

    def published(self, topic: str) -> list[Published]:
        """What the app published to ``topic``, confirmed by the broker, in order; messages
        written with ``tx.publish`` once the outbox relayed them (``drain`` waits for it)."""
        return list(self._recorder.published.get(topic, ()))

    def dead_letters(self, topic: str, *, group: str | None = None) -> list[DeadLetter]:
        """The dead letters of ``topic`` for ``group`` (default: the group of the app's one
        consumer of ``topic``), oldest first; each has its ``error`` and ``attempts``.

        On a real broker, as the last ``drain()`` read them.
        """
        group = group or self._group_of(topic)
        if self.hub is not None:
            return list(self.hub.dead_letters(topic, group).values())
        read = self._drain.dead_letters
        if (topic, group) not in read:
            raise ValueError(
                f"no dead letters were read for topic {topic!r} and group {group!r}: on a real "
                "broker drain() reads them, for the groups of the app's consumers "
                f"({sorted(read) or 'call drain() first'})"
            )
        return list(read[topic, group])

    def stats(self, consumer: HandlerOrName) -> ConsumerStats:
        """``consumer``'s counters: consumed, acked, retried, dead, ..."""
        return self.ms.consumers[self._name(consumer)].stats

    def _name(self, consumer: HandlerOrName) -> str:
        specs = self.ms.specs
        if isinstance(consumer, str):
            if consumer in specs:
                return consumer
            raise ValueError(
                f"the app has no consumer named {consumer!r}; its consumers are {sorted(specs)}"
            )
        names = [name for name, spec in specs.items() if spec.handler is consumer]
        if len(names) == 1:
            return names[0]
        shown = getattr(consumer, "__qualname__", repr(consumer))
        if names:
            raise ValueError(
                f"handler {shown} serves several consumers ({', '.join(names)}); "
                "name the one you mean"
            )
        raise ValueError(
            f"handler {shown} is no consumer's of this app; its consumers are {sorted(specs)}"
        )

    def _group_of(self, topic: str) -> str:
        groups = sorted({spec.group for spec in self.ms.specs.values() if spec.topic == topic})
        if len(groups) == 1:
            return groups[0]
        raise ValueError(
            f"topic {topic!r} has {'no consumer' if not groups else 'the groups ' + str(groups)} "
            "in this app; pass group="
        )
