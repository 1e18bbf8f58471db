"""``Publisher``: encodes values and sends them through the publish chain to the broker.

The chain is the broker's ``publish`` wrapped in the app's links (tracing,
metrics, then the user's), rebuilt whenever a link is added, so a publish
pays for no lookup of links at call time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from millstream.brokers.base import Broker
from millstream.message import OutgoingMessage, deliver_at, encode
from millstream.runtime.chains import Publish, PublishLink, publish_chain

__all__ = ["KeyBy", "Publisher"]

KeyBy = str | Callable[[Any], str | None] | None


class Publisher:
    """Publishes over ``broker``, connecting it first unless ``connected()`` says it is."""

    def __init__(
        self, broker: Broker, links: Iterable[PublishLink], connected: Callable[[], bool]
    ) -> None:
        self.broker = broker
        self._connected = connected
        self._links: list[PublishLink] = list(links)
        self._chain: Publish = publish_chain(broker.publish, self._links)

    def add_link(self, link: PublishLink) -> None:
        """Wrap every later publish in ``link``, inside the links already added."""
        self._links.append(link)
        self._chain = publish_chain(self.broker.publish, self._links)

    def remove_link(self, link: PublishLink) -> None:
        """Take ``link`` out of the chain; raises ``ValueError`` if it was never added."""
        if link not in self._links:
            raise ValueError(f"publish link {link!r} was never added")
        self._links.remove(link)
        self._chain = publish_chain(self.broker.publish, self._links)

    def use(self, broker: Broker) -> None:
        """Publish over ``broker`` from now on, through the same links."""
        self.broker = broker
        self._chain = publish_chain(broker.publish, self._links)

    async def send(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Run ``messages`` through the publish chain as they are (the outbox relay's way in)."""
        await self._chain(topic, messages)

    async def publish(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None,
        headers: Mapping[str, str] | None,
        delay: float | None = None,
    ) -> str:
        """Encode ``value``, publish it and wait for the broker's confirmation; returns its id.

        With ``delay`` (seconds) no consumer gets it before that time has passed.
        """
        out = OutgoingMessage(
            encode(value), key=key, headers=dict(headers or {}), deliver_at=deliver_at(delay)
        )
        if not self._connected():
            await self.broker.connect()  # a publisher needs no start(); connect is idempotent
        await self._chain(topic, [out])
        return out.id

    async def publish_batch(
        self,
        topic: str,
        values: Iterable[Any],
        *,
        key_by: KeyBy,
        headers: Mapping[str, str] | None,
        delay: float | None = None,
    ) -> list[str]:
        """Publish ``values`` in as few confirmed round trips as the broker allows."""
        key_of = _key_reader(key_by)
        shared = dict(headers or {})
        due = deliver_at(delay)
        batch = [
            value
            if isinstance(value, OutgoingMessage)
            else OutgoingMessage(
                encode(value), key=key_of(value), headers=dict(shared), deliver_at=due
            )
            for value in values
        ]
        if batch:
            if not self._connected():
                await self.broker.connect()
            await self._chain(topic, batch)
        return [out.id for out in batch]


def _key_reader(key_by: KeyBy) -> Callable[[Any], str | None]:
    if key_by is None:
        return lambda value: None
    if callable(key_by):
        return key_by
    field_name = key_by

    def read(value: Any) -> str | None:
        found = value.get(field_name) if isinstance(value, dict) else getattr(value, field_name)
        return None if found is None else str(found)

    return read
