"""What an app did, recorded through its own link seams: handler calls and publishes.

Three links, added with ``add_link`` and ``add_publish_link`` like any
other and taken out again afterwards:

- the *outer* handler link sees each delivery's outcome: a handled message
  is one whose chain returned (so it is acked) and whose handler was called;
- the *inner* one (``innermost=True``) sits next to the handler, inside the
  transaction and the idempotency ledger, so it sees only deliveries that
  reach the handler, and records the payload as the handler gets it;
- the publish link records what the broker confirmed, the outbox relay's
  messages included.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from millstream.message import Message, OutgoingMessage
from millstream.runtime.chains import Publish
from millstream.runtime.handler import Invoke, payload_decoder
from millstream.runtime.spec import ConsumerSpec

__all__ = ["ConsumerRecord", "Published", "Recorder", "Running"]


@dataclass(frozen=True, slots=True)
class Published:
    """A message the app published, as the broker confirmed it."""

    topic: str
    id: str
    key: str | None
    headers: Mapping[str, str]
    payload: bytes

    @property
    def value(self) -> Any:
        """The payload decoded as JSON; the bytes as they are when it is not JSON."""
        try:
            return orjson.loads(self.payload)
        except orjson.JSONDecodeError:
            return self.payload


@dataclass(frozen=True, slots=True)
class Running:
    """A delivery whose handler chain has started and not yet finished."""

    consumer: str
    message_id: str
    attempt: int
    since: float
    """When its chain started (``time.monotonic()``)."""


@dataclass
class ConsumerRecord:
    """One consumer's deliveries: how many were handled, each call's payload, what runs now."""

    handled: int = 0
    calls: list[Any] = field(default_factory=list)
    running: dict[int, Running] = field(default_factory=dict)


class _Delivery:
    """Set by the outer link for one delivery; the inner link marks the handler's return."""

    __slots__ = ("returned",)

    def __init__(self) -> None:
        self.returned = False


_DELIVERY: contextvars.ContextVar[_Delivery] = contextvars.ContextVar("millstream_test_delivery")


class Recorder:
    """Records the handler calls and publishes of the app whose ``specs`` it is given."""

    def __init__(self, specs: Mapping[str, ConsumerSpec]) -> None:
        self._specs = specs
        self.consumers: dict[str, ConsumerRecord] = {}
        self.published: dict[str, list[Published]] = {}
        self.publishes = 0
        """Every message published through the app, the test's own included."""
        self.own: set[str] = set()
        """Ids of the messages the test published, left out of ``published``."""

    def record(self, consumer: str) -> ConsumerRecord:
        found = self.consumers.get(consumer)
        if found is None:
            found = self.consumers[consumer] = ConsumerRecord()
        return found

    def running(self) -> list[Running]:
        """Deliveries being handled now, the longest running first."""
        every = [each for record in self.consumers.values() for each in record.running.values()]
        return sorted(every, key=lambda each: each.since)

    def outer(self, consumer: ConsumerSpec, inner: Invoke) -> Invoke:
        """The handler link outside the consumer's own: outcomes and what is running."""
        record = self.record(consumer.name)
        name = consumer.name

        async def invoke(message: Message) -> None:
            delivery = _Delivery()
            token = _DELIVERY.set(delivery)
            key = id(message)
            record.running[key] = Running(name, message.id, message.attempt, time.monotonic())
            try:
                await inner(message)
            finally:
                del record.running[key]
                _DELIVERY.reset(token)
            if delivery.returned:
                record.handled += 1

        return invoke

    def inner(self, consumer: ConsumerSpec, inner: Invoke) -> Invoke:
        """The handler link next to the handler: the payload of each call, and its return."""
        record = self.record(consumer.name)
        # The declared handler's hint: with publishes= the runtime calls a wrapper of it.
        decode = payload_decoder(self._specs[consumer.name].handler)

        async def invoke(message: Message) -> None:
            # A payload that does not decode never reaches the handler; the runtime says why.
            with contextlib.suppress(Exception):
                record.calls.append(decode(message))
            await inner(message)
            delivery = _DELIVERY.get(None)
            if delivery is not None:
                delivery.returned = True

        return invoke

    def publish(self, inner: Publish) -> Publish:
        """The publish link: what the broker confirmed, by topic."""

        async def send(topic: str, messages: Sequence[OutgoingMessage]) -> None:
            await inner(topic, messages)
            self.publishes += len(messages)
            listed = self.published.setdefault(topic, [])
            listed.extend(
                Published(topic, out.id, out.key, dict(out.headers), out.payload)
                for out in messages
                if out.id not in self.own
            )

        return send
