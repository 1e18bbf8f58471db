"""``Millstream``: the consumer registry, the publisher, and the start/stop lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from millstream.brokers import connect
from millstream.brokers.base import Broker, DeadLetterQueue
from millstream.errors import BrokerUnavailable, ConfigError
from millstream.message import OutgoingMessage, encode
from millstream.retry import RetryPolicy
from millstream.runtime import heap
from millstream.runtime.chains import Publish, PublishLink, publish_chain
from millstream.runtime.consumer import ConsumerRuntime
from millstream.runtime.handler import Handler, HandlerLink, injected_types
from millstream.runtime.member import MemberName, claim_member, member_name
from millstream.runtime.spec import ConsumerSpec, KeySpec
from millstream.settings import Settings, load_settings
from millstream.signals import stop_on_signals
from millstream.store import Store, Transaction, open_store
from millstream.store.handlers import in_transaction
from millstream.store.outbox import OutboxRelay

__all__ = ["Millstream", "Publish", "PublishLink", "encode"]  # the last three: older import paths

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI

    from millstream.cache import Cache, InvalidationBus
    from millstream.web.service import Service

log = logging.getLogger("millstream")

H = TypeVar("H", bound=Handler)


class Millstream:
    """A service's consumers and publisher over one broker connection.

    ``broker_url`` (or ``MILLSTREAM_BROKER_URL``) chooses the broker; other
    keyword arguments are :class:`Settings` fields. ``async with ms:``
    connects and starts every consumer, and on exit drains and stops them.
    """

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        settings: Settings | None = None,
        broker: Broker | None = None,
        **overrides: Any,
    ) -> None:
        if settings is not None and (overrides or broker_url):
            raise ConfigError("pass either settings= or individual settings, not both")
        self.settings = settings or load_settings(broker_url=broker_url, **overrides)
        self.broker: Broker = broker if broker is not None else connect(self.settings.broker_url)
        self._specs: dict[str, ConsumerSpec] = {}
        self._consumers: dict[str, ConsumerRuntime] = {}
        self._links: list[HandlerLink] = []
        self._publish_links: list[PublishLink] = []
        self._publish: Publish = self.broker.publish
        self._started = False
        self._frozen = False  # this app's share of heap.freeze()
        self._member: MemberName | None = None
        self._web: Any = None
        self._store: Store | None = None
        self._relay: OutboxRelay | None = None
        self._caches: dict[str, Cache[Any]] = {}
        self._bus: InvalidationBus | None = None

    # -- declaring consumers -------------------------------------------------

    def consumer(
        self,
        topic: str,
        *,
        group: str | None = None,
        name: str | None = None,
        concurrency: int = 1,
        key: KeySpec = None,
        retry: RetryPolicy | None = None,
        retry_on: Sequence[type[BaseException]] = (),
        dead_on: Sequence[type[BaseException]] = (),
        timeout: float | None = None,
        prefetch: int | None = None,
        max_inflight: int | None = None,
        idempotent: bool = False,
    ) -> Callable[[H], H]:
        """Register the decorated function as the handler of ``topic`` in ``group``.

        ``group`` defaults to the consumer's ``name``, which defaults to the
        function's name. ``key`` orders messages: a payload field name, a
        callable taking the ``Message``, or ``None`` for the key given to
        ``publish``. The handler's signature is checked here, not at the
        first message.

        A handler with a ``tx: Transaction`` parameter runs inside a store
        transaction that commits when it returns. ``idempotent=True`` also
        records the message id in that transaction, so a redelivered
        message (a crash after the commit, before the ack) has no second
        effect.
        """

        def register(handler: H) -> H:
            consumer_name = name or getattr(handler, "__name__", None) or topic
            if self._started:
                raise ConfigError(
                    f"consumer {consumer_name!r} was registered after start(); "
                    "register every consumer before starting the app"
                )
            if consumer_name in self._specs:
                raise ConfigError(
                    f"a consumer named {consumer_name!r} is already registered; "
                    "give this one a different name= "
                )
            policy = (retry or RetryPolicy()).with_errors(retry_on, dead_on)
            links: tuple[HandlerLink, ...] = ()
            if idempotent or Transaction in injected_types(handler):
                links = (in_transaction(self.store, idempotent=idempotent),)
            self._specs[consumer_name] = ConsumerSpec(
                name=consumer_name,
                topic=topic,
                group=group or consumer_name,
                handler=handler,
                concurrency=concurrency,
                key=key,
                retry=policy,
                timeout=timeout,
                prefetch=prefetch,
                max_inflight=max_inflight,
                links=links,
            )
            return handler

        return register

    def add_link(self, link: HandlerLink) -> None:
        """Wrap every handler in ``link``; the first added is the outermost. Takes effect
        at start."""
        self._links.append(link)

    def add_publish_link(self, link: PublishLink) -> None:
        """Wrap every publish in ``link``; the first added is the outermost."""
        self._publish_links.append(link)
        self._publish = publish_chain(self.broker.publish, self._publish_links)

    # -- state: the store, the outbox and caches --------------------------------

    @property
    def store(self) -> Store:
        """The state store (``store_url``), opened at start with its schema, once used.

        First used after the start (say, only inside a route), it opens on
        its first query and its outbox relay starts at once.
        """
        if self._store is None:
            self._store = open_store(self.settings.store_url)
            if self._started:
                self._start_relay(self._store)
        return self._store

    def cache(self, name: str, *, ttl: float = 30.0, max_entries: int = 10_000) -> Cache[Any]:
        """A read cache named ``name``, invalidated on every instance (``cache_url``)."""
        if name in self._caches:
            raise ConfigError(f"a cache named {name!r} already exists; give this one another name")
        from millstream.cache import Cache, open_bus

        if self._bus is None:
            settings = self.settings
            self._bus = open_bus(
                settings.cache_url, channel=settings.cache_channel, store_url=settings.store_url
            )
        cache: Cache[Any] = Cache(name, ttl=ttl, max_entries=max_entries, bus=self._bus)
        self._caches[name] = cache
        return cache

    @property
    def caches(self) -> Mapping[str, Cache[Any]]:
        return self._caches

    @property
    def opened_store(self) -> Store | None:
        """The store if this app uses one (and opens it at start), without creating it."""
        return self._store

    @property
    def relay(self) -> OutboxRelay | None:
        """The outbox relay, running while the app is started with a store."""
        return self._relay

    # -- the web side (imported lazily: nothing below millstream.web needs FastAPI) --

    @property
    def web(self) -> Service:
        """The web layer of this app: health, metrics, auth, lifespan (made on first use)."""
        if self._web is None:
            from millstream.web.service import Service

            self._web = Service(self)
        service: Service = self._web
        return service

    def fastapi(self, app: FastAPI | None = None, **kwargs: Any) -> FastAPI:
        """A FastAPI app whose lifespan runs these consumers, with health, metrics and admin."""
        from millstream.web import create_app

        return create_app(self, app, **kwargs)

    @property
    def lifespan(self) -> Callable[[Any], AbstractAsyncContextManager[None]]:
        """For ``FastAPI(lifespan=ms.lifespan)``: start with the server, drain on shutdown."""
        return self.web.lifespan

    @property
    def router(self) -> APIRouter:
        """Health, metrics and admin routes, for an app you compose yourself."""
        return self.web.router

    @property
    def started(self) -> bool:
        return self._started

    @property
    def consumers(self) -> Mapping[str, ConsumerRuntime]:
        """The consumers by name: empty before the first start, STOPPED (stats kept) after stop."""
        return self._consumers

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Connect the broker and start every consumer.

        An unreachable broker does not stop the start: consumers keep
        reconnecting (state RECONNECTING) until it answers. Refused
        credentials do, with ``AuthenticationError``.
        """
        if self._started:
            return
        await self._open_state()
        try:
            await self.broker.connect()
        except BrokerUnavailable as exc:
            log.warning(
                "broker %s is unreachable (%s); consumers will keep trying", self.broker.url, exc
            )
        except BaseException:
            await self._close_state()
            raise
        self._started = True
        self._consumers = {}
        self._member = claim_member(self.settings.member)
        for spec in self._specs.values():
            if self._links:
                spec = ConsumerSpec(**{**spec.__dict__, "links": (*self._links, *spec.links)})
            member = member_name(self._member.name, spec.name)
            runtime = ConsumerRuntime(spec, self.broker, self.settings, member=member)
            self._consumers[spec.name] = runtime
        await asyncio.gather(*(c.start() for c in self._consumers.values()))
        if self.settings.gc_freeze:
            heap.freeze()
            self._frozen = True

    async def stop(self) -> None:
        """Drain and stop every consumer, then close the broker."""
        if not self._started:
            return
        self._started = False
        try:
            # Every consumer drains even if another fails to: the broker closes after all.
            results = await asyncio.gather(
                *(c.stop() for c in self._consumers.values()), return_exceptions=True
            )
            for consumer, result in zip(self._consumers.values(), results, strict=True):
                if isinstance(result, BaseException):
                    log.error("consumer %s did not stop cleanly: %r", consumer.name, result)
            await self._close_state()
        finally:
            if self._frozen:
                self._frozen = False
                heap.thaw()
            try:
                await self.broker.close()
            finally:
                if self._member is not None:
                    self._member.release()  # only now: no subscription uses the name any more

    @property
    def member(self) -> str | None:
        """This process's member name in its groups while started (see ``Settings.member``)."""
        return self._member.name if self._member is not None and self._started else None

    async def _open_state(self) -> None:
        """Open the store (schema included) and start the relay, if the app uses them."""
        if self._bus is not None:
            await self._bus.start()
        if self._store is None:
            return
        try:
            await self._store.open()
        except BaseException:
            await self._close_state()
            raise
        self._start_relay(self._store)

    def _start_relay(self, store: Store) -> None:
        settings = self.settings
        self._relay = OutboxRelay(
            store,
            lambda topic, messages: self._publish(topic, messages),
            self.broker.connect,
            batch=settings.outbox_batch,
            poll_interval=settings.outbox_poll_interval,
            processed_retention=settings.idempotency_retention,
        )
        self._relay.start()

    async def _close_state(self) -> None:
        """After the consumers: flush the outbox, close the store and the cache bus."""
        relay, self._relay = self._relay, None
        try:
            if relay is not None:
                await relay.stop(flush_timeout=min(5.0, self.settings.drain_timeout))
        finally:
            try:
                if self._store is not None:
                    await self._store.close()
            finally:
                if self._bus is not None:
                    await self._bus.close()

    async def __aenter__(self) -> Millstream:
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
    ) -> str:
        """Publish one message and wait for the broker's confirmation; returns its id."""
        out = OutgoingMessage(encode(value), key=key, headers=dict(headers or {}))
        if not self._started:
            await self.broker.connect()  # a publisher needs no start(); connect is idempotent
        await self._publish(topic, [out])
        return out.id

    async def publish_batch(
        self,
        topic: str,
        values: Iterable[Any],
        *,
        key_by: str | Callable[[Any], str | None] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Publish many messages in as few confirmed round trips as the broker allows.

        ``key_by`` gives each message its key: a field name of the value
        (attribute or dict key) or a callable of the value. An
        ``OutgoingMessage`` among ``values`` is published as it is, with its
        own key and headers.
        """
        key_of = _key_reader(key_by)
        shared = dict(headers or {})
        batch = [
            value
            if isinstance(value, OutgoingMessage)
            else OutgoingMessage(encode(value), key=key_of(value), headers=dict(shared))
            for value in values
        ]
        if batch:
            if not self._started:
                await self.broker.connect()
            await self._publish(topic, batch)
        return [out.id for out in batch]

    async def dead_letters(self, topic: str, group: str) -> DeadLetterQueue:
        """The dead-letter queue of ``topic`` for ``group``; connects the broker if need be."""
        if not self._started:
            await self.broker.connect()  # connect is idempotent; the queue needs no start()
        return await self.broker.dead_letters(topic, group)


def _key_reader(key_by: str | Callable[[Any], str | None] | None) -> Callable[[Any], str | None]:
    if key_by is None:
        return lambda value: None
    if callable(key_by):
        return key_by
    field_name = key_by

    def read(value: Any) -> str | None:
        found = value.get(field_name) if isinstance(value, dict) else getattr(value, field_name)
        return None if found is None else str(found)

    return read
