"""``App``: a service's consumers, publisher and state over one broker, started and stopped as one.

The app ties four parts, each in a module of its own: the ``Registry`` of
consumers and handler links, the ``Publisher`` and its chain, the ``State``
(store, outbox relay, caches) and the instruments, installed here once
whatever face runs the app (HTTP, ``serve()``, ``async with``): tracing,
outermost in both chains, and metrics, which time publishes and read the
handler durations the consumers keep.

The lifecycle is this module's own: ``start`` opens the state, connects the
broker, then starts every consumer; ``stop`` drains the consumers, closes
the state, then the broker. ``millstream.Millstream`` is this app with its
HTTP face.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from millstream.app.declarations import Declared, DeclaresConsumers
from millstream.app.publications import HandlerPublishing, Publication, Publications, TopicPublisher
from millstream.app.publisher import KeyBy, Publisher
from millstream.app.registry import Registry
from millstream.app.router import Router
from millstream.app.state import State
from millstream.brokers import connect
from millstream.brokers.base import Broker, DeadLetterQueue
from millstream.errors import BrokerUnavailable, ConfigError
from millstream.observability.metrics import Metrics
from millstream.observability.tracing import tracing_links
from millstream.runtime import heap
from millstream.runtime.chains import PublishLink
from millstream.runtime.consumer import ConsumerRuntime
from millstream.runtime.handler import HandlerLink, check_handler
from millstream.runtime.member import MemberName, claim_member, member_name
from millstream.runtime.spec import ConsumerSpec
from millstream.settings import Settings, load_settings
from millstream.signals import stop_on_signals
from millstream.store import Store
from millstream.store.outbox import OutboxRelay
from millstream.urls import redact

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from millstream.cache import Cache

__all__ = ["App"]

log = logging.getLogger("millstream")

M = TypeVar("M")


class App(DeclaresConsumers):
    """A service's consumers and publisher over one broker connection.

    ``broker_url`` (or ``MILLSTREAM_BROKER_URL``) chooses the broker; other
    keyword arguments are :class:`Settings` fields. ``async with ms:``
    connects and starts every consumer, and on exit drains and stops them.
    Spans go to ``tracer_provider``, or to the global one (set before or
    after) when it is ``None``.
    """

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        settings: Settings | None = None,
        broker: Broker | None = None,
        tracer_provider: TracerProvider | None = None,
        **overrides: Any,
    ) -> None:
        if settings is not None and (overrides or broker_url):
            raise ConfigError("pass either settings= or individual settings, not both")
        self.settings = settings or load_settings(broker_url=broker_url, **overrides)
        self.broker: Broker = broker if broker is not None else connect(self.settings.broker_url)
        self.metrics = Metrics()
        """This app's Prometheus metrics (its own registry), whatever face serves them."""
        self.metrics.observe(self)
        # Tracing outermost in both chains, so its spans hold the time metrics measure.
        # (Handler durations need no link: the dispatcher times them into the stats.)
        traced = tracing_links(lambda: self.broker.url, tracer_provider)  # running_on swaps it
        self._registry = Registry([traced.handler])
        self._publisher = Publisher(
            self.broker, [traced.publish, self.metrics.publish_link], lambda: self._started
        )
        # The broker looked up at each reconnect: running_on() may replace it.
        self._state = State(self.settings, self._publisher.send, lambda: self.broker.connect())
        self._publications = Publications()
        self._routers: list[Router] = []
        self._consumers: dict[str, ConsumerRuntime] = {}
        self._started = False
        self._frozen = False  # this app's share of heap.freeze()
        self._member: MemberName | None = None
        self.dependency_overrides: dict[Callable[..., Any], Callable[..., Any]] = {}
        """Providers replaced by others in handlers' dependencies, ``{original: replacement}``,
        as in FastAPI; read at start, so a test sets them before ``async with ms``."""

    # -- declaring consumers -------------------------------------------------

    def _declare(self, consumer: Declared, links: Sequence[HandlerLink] = ()) -> None:
        """Register ``consumer`` with ``links`` (a router's), its transaction, its publishing."""
        spec = consumer.spec
        self._registry.check(spec)
        transaction = self._state.handler_links(spec.handler, idempotent=consumer.idempotent)
        own = (*links, *transaction)
        runs = None
        if consumer.publishes is not None:
            publishing = HandlerPublishing(
                consumer.publishes, self._publisher.send, transactional=bool(transaction)
            )
            own, runs = (*own, publishing.link), publishing.wrap(spec.handler)
            self._publications.add(Publication(consumer.publishes, consumer.returns, spec.name))
        self._registry.add(replace(spec, links=own), runs)

    def include_router(self, router: Router, *, prefix: str = "") -> None:
        """Add ``router``'s consumers and publishers, ``prefix`` in front of their topics.

        What the router holds now is added (later declarations on it are
        not). Consumer names stay as declared and must be unique in the
        app; a clash fails here, naming both, and adds nothing. A router
        may be included in several apps: each makes its own consumers.
        """
        if self._started:
            raise ConfigError(
                "include_router() was called after start(); include every router before "
                "starting the app"
            )
        if any(included is router for included in self._routers):
            raise ConfigError(
                "this router is already included in this app; its consumers' names would "
                "clash: include a router once per app"
            )
        consumers = [declared.prefixed(prefix) for declared in router.consumers]
        publishers = [(prefix + each.topic, each) for each in router.publishers]
        problems = [
            *(self._registry.clash(declared.spec) for declared in consumers),
            *(self._publications.conflict(topic, each.model) for topic, each in publishers),
        ]
        for problem in problems:
            if problem is not None:
                raise ConfigError(problem)  # before anything is added
        self._routers.append(router)
        for declared in consumers:
            self._declare(declared, router.links)
        for topic, publisher in publishers:
            publisher.bind(topic, self._publisher.publish)
            self._publications.include(publisher, topic)

    def publisher(self, topic: str, *, model: type[M] | None = None) -> TopicPublisher[M]:
        """Declare a topic this service sends ``model`` values to, outside handlers.

        ``await pub.publish(value, key=..., headers=...)`` checks the value
        is a ``model`` (a dict is validated into one) and publishes it like
        ``ms.publish``. The topic and model are listed in ``publications``.
        """
        return self._publications.publisher(topic, model, self._publisher.publish)

    @property
    def publications(self) -> Mapping[str, tuple[Publication, ...]]:
        """The topics this app declares it sends to, each with who declares it and the
        payload type: consumers' ``publishes=`` and ``publisher(...)``, routers' included."""
        return self._publications.by_topic

    def add_link(self, link: HandlerLink, *, innermost: bool = False) -> None:
        """Wrap every handler in ``link``; the first added is the outermost. Takes effect
        at start.

        A link goes outside each consumer's own links (its transaction, its
        idempotency ledger); ``innermost=True`` puts it inside them, next to
        the handler: it runs in the transaction, and not for a duplicate the
        ledger acks without calling the handler.
        """
        self._registry.add_link(link, innermost=innermost)

    def remove_link(self, link: HandlerLink) -> None:
        """Take out a link ``add_link`` added; takes effect at the next start."""
        self._registry.remove_link(link)

    def add_publish_link(self, link: PublishLink) -> None:
        """Wrap every publish in ``link``; the first added is the outermost."""
        self._publisher.add_link(link)

    def remove_publish_link(self, link: PublishLink) -> None:
        """Take out a link ``add_publish_link`` added; takes effect at once."""
        self._publisher.remove_link(link)

    @property
    def specs(self) -> Mapping[str, ConsumerSpec]:
        """The registered consumers' specs by name, as declared (without the app's links)."""
        return self._registry.specs

    # -- state: the store, the outbox and caches --------------------------------

    @property
    def store(self) -> Store:
        """The state store (``store_url``), opened at start with its schema, once used.

        First used after the start (say, only inside a route), it opens on
        its first query and its outbox relay starts at once.
        """
        return self._state.store

    def cache(self, name: str, *, ttl: float = 30.0, max_entries: int = 10_000) -> Cache[Any]:
        """A read cache named ``name``, invalidated on every instance (``cache_url``)."""
        return self._state.cache(name, ttl=ttl, max_entries=max_entries)

    @property
    def caches(self) -> Mapping[str, Cache[Any]]:
        return self._state.caches

    @property
    def opened_store(self) -> Store | None:
        """The store if this app uses one (and opens it at start), without creating it."""
        return self._state.opened_store

    @property
    def relay(self) -> OutboxRelay | None:
        """The outbox relay, running while the app is started with a store."""
        return self._state.relay

    # -- lifecycle ---------------------------------------------------------

    @contextmanager
    def running_on(self, broker: Broker, **settings: Any) -> Iterator[None]:
        """Run on ``broker``, with ``settings`` (``store_url``, say) over the app's own,
        until the block ends: the seam through which tests run an app unchanged.

        Consumers, links, routers, the store's schema and routes all stay;
        a store already made is replaced by one for the new ``store_url``.
        Call it before ``start()`` and stop the app inside the block: then
        the block's end puts back the app's broker, settings and store,
        untouched, and the app can be started again.
        """
        if self._started:
            raise ConfigError(
                "running_on() was called on a started app; call it before start() "
                "(after stop()) to run the app on another broker"
            )
        overrides = {**self.settings.model_dump(), **settings, "broker_url": broker.url}
        previous = (self.broker, self.settings)
        undo_state = self._state.use(load_settings(**overrides))
        self._use(broker, self._state.settings)
        try:
            yield
        finally:
            if self._started:
                raise ConfigError(
                    f"the app is still started on {redact(broker.url)} at the end of "
                    "running_on(); stop() it inside the block"
                )
            undo_state()
            self._use(*previous)

    def _use(self, broker: Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self._publisher.use(broker)

    @property
    def started(self) -> bool:
        return self._started

    @property
    def consumers(self) -> Mapping[str, ConsumerRuntime]:
        """The consumers by name: empty before the first start, STOPPED (stats kept) after stop."""
        return self._consumers

    @property
    def member(self) -> str | None:
        """This process's member name in its groups while started (see ``Settings.member``)."""
        return self._member.name if self._member is not None and self._started else None

    async def start(self) -> None:
        """Connect the broker and start every consumer.

        An unreachable broker does not stop the start: consumers keep
        reconnecting (state RECONNECTING) until it answers. Refused
        credentials do, with ``AuthenticationError``, and a dependency
        override a handler cannot run with, with ``HandlerSignatureError``.
        """
        if self._started:
            return
        overrides = dict(self.dependency_overrides)
        if overrides:  # checked before anything opens, so a bad one leaves nothing open
            for spec in self._registry.specs.values():
                check_handler(spec.handler, overrides)
        await self._state.open()
        try:
            await self.broker.connect()
        except BrokerUnavailable as exc:
            log.warning(
                "broker %s is unreachable (%s); consumers will keep trying", self.broker.url, exc
            )
        except BaseException:
            await self._state.close()
            raise
        self._started = True
        self._registry.closed = True
        self._member = claim_member(self.settings.member)
        self._consumers = {
            spec.name: ConsumerRuntime(
                spec,
                self.broker,
                self.settings,
                member=member_name(self._member.name, spec.name),
                dependency_overrides=overrides,
            )
            for spec in self._registry.linked()
        }
        await asyncio.gather(*(c.start() for c in self._consumers.values()))
        if self.settings.gc_freeze:
            heap.freeze()
            self._frozen = True

    async def stop(self) -> None:
        """Drain and stop every consumer, close the state, then close the broker."""
        if not self._started:
            return
        self._started = False
        self._registry.closed = False
        try:
            # Every consumer drains even if another fails to: the broker closes after all.
            results = await asyncio.gather(
                *(c.stop() for c in self._consumers.values()), return_exceptions=True
            )
            for consumer, result in zip(self._consumers.values(), results, strict=True):
                if isinstance(result, BaseException):
                    log.error("consumer %s did not stop cleanly: %r", consumer.name, result)
            await self._state.close()
        finally:
            if self._frozen:
                self._frozen = False
                heap.thaw()
            try:
                await self.broker.close()
            finally:
                if self._member is not None:
                    self._member.release()  # only now: no subscription uses the name any more

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve(self, until: Awaitable[Any] | None = None) -> None:
        """Start, run until SIGINT/SIGTERM (or ``until`` completes), then stop gracefully."""
        stop = asyncio.Event()
        with stop_on_signals(stop.set):
            async with self:
                waiters = [asyncio.ensure_future(stop.wait())]
                if until is not None:
                    waiters.append(asyncio.ensure_future(until))
                _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in pending:
                    waiter.cancel()
                log.info("stopping: draining in-flight messages")

    # -- publishing ----------------------------------------------------------

    async def publish(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float | None = None,
    ) -> str:
        """Publish one message and wait for the broker's confirmation; returns its id.

        With ``delay`` (seconds) no consumer gets it before that time has passed.
        """
        return await self._publisher.publish(topic, value, key=key, headers=headers, delay=delay)

    async def publish_batch(
        self,
        topic: str,
        values: Iterable[Any],
        *,
        key_by: KeyBy = None,
        headers: Mapping[str, str] | None = None,
        delay: float | None = None,
    ) -> list[str]:
        """Publish many messages in as few confirmed round trips as the broker allows.

        ``key_by`` gives each message its key: a field name of the value
        (attribute or dict key) or a callable of the value. An
        ``OutgoingMessage`` among ``values`` is published as it is, with its
        own key, headers and ``deliver_at``. ``delay`` (seconds) holds the others back
        from consumers for that long.
        """
        return await self._publisher.publish_batch(
            topic, values, key_by=key_by, headers=headers, delay=delay
        )

    async def dead_letters(self, topic: str, group: str) -> DeadLetterQueue:
        """The dead-letter queue of ``topic`` for ``group``; connects the broker if need be."""
        if not self._started:
            await self.broker.connect()  # connect is idempotent; the queue needs no start()
        return await self.broker.dead_letters(topic, group)
