"""The in-process broker: the reference behaviour of the contract, for logic tests.

Each :class:`MemoryBroker` is one client of a :class:`MemoryHub`, which holds
the topics (:mod:`millstream.brokers.memory.hub`); two brokers on one hub are
two "processes" sharing a broker. Cutting a broker's connection gives back
what its members held, counted; abandoning it leaves their leases to run out.
"""

from __future__ import annotations

from collections.abc import Sequence

from millstream.brokers.base import Capabilities, Layout
from millstream.brokers.memory.connection import MemoryConnection, parse_url
from millstream.brokers.memory.dead_letters import MemoryDeadLetters
from millstream.brokers.memory.hub import MemoryHub
from millstream.brokers.memory.subscription import MemorySubscription
from millstream.message import OutgoingMessage

__all__ = ["MemoryBroker", "MemoryDeadLetters", "MemoryHub", "MemorySubscription"]


class MemoryBroker:
    """One connection to a :class:`MemoryHub`. ``memory://?lease=SECONDS``."""

    capabilities = Capabilities(native_delay=True, durable=False, key_order=False)

    def __init__(self, hub: MemoryHub | None = None, *, url: str = "memory://") -> None:
        self.url = url
        self.hub = hub if hub is not None else MemoryHub()
        self._connection = MemoryConnection(url, self.hub)
        self._subscriptions: list[MemorySubscription] = []

    @classmethod
    def from_url(cls, url: str) -> MemoryBroker:
        """A broker on a hub of its own, for ``url``; raises ``ConfigError`` on a bad lease."""
        return cls(MemoryHub(lease=parse_url(url)), url=url)

    async def connect(self) -> None:
        """Connect to the hub; a no-op when connected."""
        self._connection.open()

    async def ping(self) -> None:
        """The hub is in this process: connected is answering."""
        await self.connect()

    async def close(self) -> None:
        """Close every subscription (releasing what it holds, uncounted), then disconnect."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        self._connection.drop()

    def cut(self) -> None:
        """Drop the connection as a network failure would: held messages go back, counted."""
        self._connection.drop()
        for subscription in self._subscriptions:
            subscription.lost()
        self._subscriptions.clear()

    def abandon(self) -> None:
        """Vanish as a crashed process would: nothing is released, leases run out."""
        self._connection.drop()
        self._subscriptions.clear()

    def check(self, epoch: int | None = None) -> None:
        """``BrokerUnavailable`` unless connected (in ``epoch``, if given)."""
        self._connection.check(epoch)

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Append ``messages`` to the topic's log and wake its waiting fetches."""
        self._connection.check()
        self.hub.publish(topic, messages)

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> MemorySubscription:
        """Join ``group`` on ``topic``; under a ``member`` name, take back at once (counted)
        what a crashed member of that name still holds."""
        self._connection.check()
        self.hub.group(topic, group)
        owner, taken = self.hub.new_owner(topic, group, member)
        subscription = MemorySubscription(
            self._connection, topic, group, owner, forget=self._forget
        )
        subscription.taken_over = taken
        self._subscriptions.append(subscription)
        return subscription

    async def dead_letters(self, topic: str, group: str) -> MemoryDeadLetters:
        """The dead-letter queue of ``topic`` and ``group``."""
        self._connection.check()
        return MemoryDeadLetters(self._connection, topic, group)

    def layout(self, topic: str, group: str) -> Layout:
        """Nothing to name: retries and dead letters stay in the hub, in process."""
        return Layout()

    def _forget(self, subscription: MemorySubscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
