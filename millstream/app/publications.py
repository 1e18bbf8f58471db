"""What an app publishes, declared: ``publishes=`` on a consumer and ``ms.publisher(topic)``.

A consumer declared with ``publishes="topic"`` publishes its handler's
return value. That costs only the consumers that ask: the app wraps their
handler (:class:`HandlerPublishing`) and adds one link that remembers the
incoming message, whose key the published message carries. A consumer
without ``publishes=`` runs exactly as before.

Every declaration is recorded as a :class:`Publication` (topic, payload
type, who declares it), so the app can list what it sends before it runs.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import time
import typing
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import TypeAdapter

from millstream.errors import ConfigError
from millstream.message import Message, OutgoingMessage, encode
from millstream.runtime.chains import Publish
from millstream.runtime.handler import Handler, Invoke
from millstream.runtime.spec import ConsumerSpec
from millstream.store.transaction import current_transaction

__all__ = [
    "HandlerPublishing",
    "Publication",
    "Publications",
    "PublishValue",
    "TopicPublisher",
    "returned_type",
]

M = TypeVar("M")

_INCOMING: contextvars.ContextVar[Message] = contextvars.ContextVar("millstream_incoming")
"""The message whose handler runs now, for consumers with ``publishes=`` only."""


class PublishValue(Protocol):
    """The app's ``publish``: encode, run the publish chain, wait for the confirmation."""

    def __call__(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None,
        headers: Mapping[str, str] | None,
        delay: float | None,
    ) -> Awaitable[str]: ...


@dataclass(frozen=True)
class Publication:
    """A topic the app sends to, its payload type, and who declares it."""

    topic: str
    payload: Any
    """The payload type: the handler's return annotation or the publisher's ``model``
    (``None`` when neither says)."""
    consumer: str | None = None
    """The consumer publishing its return value; ``None`` for ``ms.publisher``."""

    @property
    def declared_by(self) -> str:
        return "publisher" if self.consumer is None else f"consumer {self.consumer!r}"


class Publications:
    """The app's declared publications by topic, in the order they were declared."""

    def __init__(self) -> None:
        self._by_topic: dict[str, tuple[Publication, ...]] = {}
        self._publishers: dict[str, TopicPublisher[Any]] = {}

    @property
    def by_topic(self) -> Mapping[str, tuple[Publication, ...]]:
        return self._by_topic

    def add(self, publication: Publication) -> None:
        listed = self._by_topic.get(publication.topic, ())
        if publication not in listed:
            self._by_topic[publication.topic] = (*listed, publication)

    def publisher(
        self, topic: str, model: type[M] | None, publish: PublishValue
    ) -> TopicPublisher[M]:
        """The app's publisher of ``topic``: the one declared before if its model is the same."""
        problem = self.conflict(topic, model)
        if problem is not None:
            raise ConfigError(problem)
        known = self._publishers.get(topic)
        if known is not None:
            return known
        made = TopicPublisher(topic, model)
        made.bind(topic, publish)
        self.include(made, topic)
        return made

    def conflict(self, topic: str, model: Any) -> str | None:
        """Why a publisher of ``model`` cannot be declared for ``topic``, if it cannot."""
        known = self._publishers.get(topic)
        if known is None or known.model is model:
            return None
        return (
            f"topic {topic!r} already has a publisher of {_name(known.model)}; "
            f"declare it once, with one model (here: {_name(model)})"
        )

    def include(self, publisher: TopicPublisher[Any], topic: str) -> None:
        """Record ``publisher`` (bound to this app) as sending to ``topic``."""
        self._publishers.setdefault(topic, publisher)
        self.add(Publication(topic, publisher.model))


class TopicPublisher(Generic[M]):
    """Sends values of ``model`` to one topic through the app's publish chain.

    Made by ``ms.publisher(topic, model=...)``, or by ``router.publisher``
    and bound when the router is included.
    """

    def __init__(self, topic: str, model: type[M] | None) -> None:
        self.topic = topic
        """The topic as declared (a router's prefix is added when it is included)."""
        self.model = model
        self._adapter: TypeAdapter[M] | None = None if model is None else TypeAdapter(model)
        self._targets: list[tuple[str, PublishValue]] = []

    def bind(self, topic: str, publish: PublishValue) -> None:
        """Publish to ``topic`` with ``publish`` (an app's)."""
        self._targets.append((topic, publish))

    async def publish(
        self,
        value: M | Mapping[str, Any],
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float | None = None,
    ) -> str:
        """Publish ``value`` (a ``model`` instance, or a dict validated into one) and wait
        for the broker's confirmation; returns the message id. With ``delay`` (seconds)
        no consumer gets it before that time has passed."""
        if len(self._targets) != 1:
            where = "no app" if not self._targets else f"{len(self._targets)} apps"
            raise ConfigError(
                f"publisher of {self.topic!r} belongs to a router included in {where}, so it "
                "cannot tell which app to publish through; include the router in exactly one "
                "app, or use that app's ms.publisher(...)"
            )
        topic, send = self._targets[0]
        return await send(topic, self._checked(value), key=key, headers=headers, delay=delay)

    def _checked(self, value: Any) -> Any:
        model = self.model
        if self._adapter is None or (isinstance(model, type) and isinstance(value, model)):
            return value
        # A dict becomes the model (a ValidationError names what is wrong); anything else fails.
        return self._adapter.validate_python(value)


def returned_type(handler: Handler, consumer: str, topic: str) -> Any:
    """The payload type a handler declared with ``publishes=topic`` returns (``None`` if
    unannotated); a handler annotated ``-> None`` has nothing to publish."""
    try:
        returns = typing.get_type_hints(handler).get("return")
    except Exception:  # the runtime's own check reports unresolvable hints
        return None
    if returns is type(None):
        raise ConfigError(
            f"consumer {consumer!r} publishes to {topic!r} what its handler returns, but the "
            "handler is annotated `-> None`; annotate what it returns (a pydantic model, "
            "dict, list, str or bytes)"
        )
    return returns


class HandlerPublishing:
    """How a consumer with ``publishes=topic`` sends its handler's return value.

    ``wrap`` gives the handler the runtime calls: the user's, then the
    publish of what it returned (``None`` publishes nothing). In a
    transaction (``transactional``) the value goes to the outbox and commits
    with the handler's writes; otherwise ``send`` (the app's publish chain)
    publishes it and waits for the confirmation before the message is acked,
    so a failed publish fails the attempt. ``link`` remembers the incoming
    message, whose key the published one carries.
    """

    def __init__(self, topic: str, send: Publish, *, transactional: bool) -> None:
        self.topic = topic
        self._send = send
        self._transactional = transactional

    def link(self, consumer: ConsumerSpec, inner: Invoke) -> Invoke:
        """A handler link setting the incoming message for the wrapped handler."""

        async def invoke(message: Message) -> None:
            token = _INCOMING.set(message)
            try:
                await inner(message)
            finally:
                _INCOMING.reset(token)

        return invoke

    def wrap(self, handler: Handler) -> Handler:
        """``handler`` followed by the publish of its return value; the runtime reads the
        same signature (``functools.wraps``)."""
        if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            inspect.unwrap(handler)
        ):
            return self._wrap_async(handler)
        return self._wrap_sync(handler)

    def _wrap_async(self, handler: Handler) -> Handler:
        emit = self._emit

        @functools.wraps(handler)
        async def publishing(*args: Any, **kwargs: Any) -> None:
            value = await handler(*args, **kwargs)
            if value is not None:
                await emit(value, _INCOMING.get().key)

        return publishing

    def _wrap_sync(self, handler: Handler) -> Handler:
        # A plain def runs on a worker thread; what it returns is published on the event
        # loop, which the runtime does by awaiting the awaitable this returns.
        emit = self._emit

        async def after(awaitable: Awaitable[Any], key: str | None) -> None:
            value = await awaitable
            if value is not None:
                await emit(value, key)

        @functools.wraps(handler)
        def publishing(*args: Any, **kwargs: Any) -> Awaitable[None] | None:
            value = handler(*args, **kwargs)
            key = _INCOMING.get().key
            if inspect.isawaitable(value):  # a sync decorator around an async handler
                return after(value, key)
            return None if value is None else emit(value, key)

        return publishing

    async def _emit(self, value: Any, key: str | None) -> None:
        if self._transactional:
            tx = current_transaction()
            if isinstance(value, OutgoingMessage):
                at = value.deliver_at
                delay = None if at is None else max(0.0, at - time.time())
                tx.publish(
                    self.topic, value.payload, key=value.key, headers=value.headers, delay=delay
                )
            else:
                tx.publish(self.topic, value, key=key)
            return
        out = value if isinstance(value, OutgoingMessage) else OutgoingMessage(encode(value), key)
        await self._send(self.topic, [out])


def _name(model: Any) -> str:
    return "any value" if model is None else getattr(model, "__name__", repr(model))
