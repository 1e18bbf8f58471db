"""The broker contract: what every adapter promises the runtime.

The runtime talks to a broker only through these protocols. Adapters are the
only modules that import a client library; they translate its exceptions
into :mod:`millstream.errors` at their boundary.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from millstream.message import Message, OutgoingMessage

__all__ = [
    "Broker",
    "Capabilities",
    "DeadLetter",
    "DeadLetterQueue",
    "Lag",
    "Layout",
    "Place",
    "Subscription",
    "due_only",
    "early",
]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a broker can promise; the conformance suite skips what it cannot."""

    native_delay: bool = False
    """Delayed redelivery is the broker's own (not a client-side timer)."""
    partitions: bool = False
    """Messages carry a partition and offset."""
    lag: bool = True
    """``Subscription.lag`` reports a number."""
    replay: bool = True
    """Dead letters can be replayed into the group."""
    durable: bool = True
    """Messages survive the process that published them."""
    key_order: bool = False
    """Members of a group never handle two messages with one publish key at once.

    Within one member the runtime orders by key on every broker; across
    members only brokers with this flag do (by partition or by lease).
    """


@dataclass(frozen=True, slots=True)
class Lag:
    """Messages of a group not yet acknowledged: waiting, in flight or retrying."""

    total: int
    partitions: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message parked in the dead-letter queue, with why and after how many attempts."""

    id: str
    message_id: str
    topic: str
    group: str
    payload: bytes
    key: str | None
    headers: dict[str, Any]
    """As the broker holds them: strings, or other JSON values where its format allows."""
    attempts: int
    error: str
    failed_at: float


@dataclass(frozen=True, slots=True)
class Place:
    """One place a broker keeps messages in, by the name its own tools show.

    ``name`` may hold ``{parameter}`` placeholders, each taking the values
    ``parameters`` lists (RabbitMQ's retry queues, one per delay step).
    ``holds`` says what is there in words true for every group that shares
    the place.
    """

    name: str
    kind: str
    """What the broker calls it: "Kafka topic", "RabbitMQ queue", "Redis stream", ..."""
    holds: str
    parameters: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def names(self) -> list[str]:
        """Every name the place stands for, its placeholders filled in."""
        names = [self.name]
        for parameter, values in self.parameters:
            names = [name.replace(f"{{{parameter}}}", value) for name in names for value in values]
        return names


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a broker keeps one group's messages of one topic besides the topic itself.

    Named by the broker package from its own naming, so a document or a tool
    pointing at these places never guesses them. Empty where the broker
    keeps them in place or in process (the memory broker).
    """

    queue: Place | None = None
    """The group's own queue, where its members take the topic's messages from a place
    other than the topic (RabbitMQ)."""
    retry: tuple[Place, ...] = ()
    """Where the group's retries wait out their delay or come back through; empty where
    the broker retries in place (NATS: a delayed ``-NAK``; SQLite: the delivery row waits)."""
    delay: Place | None = None
    """Where delayed publishes to the topic wait before any group gets them, when that is a
    place of its own."""
    dead_letters: Place | None = None
    """Where the group's dead letters are kept."""
    dead_letter_headers: tuple[tuple[str, str], ...] = ()
    """What a dead letter carries besides the message's own headers, ``(name, meaning)``:
    headers, or the fields or columns where the broker has no headers."""

    @property
    def places(self) -> tuple[Place, ...]:
        """Every place named: the queue, retries, delayed publishes, dead letters."""
        places = (self.queue, *self.retry, self.delay, self.dead_letters)
        return tuple(place for place in places if place is not None)


class DeadLetterQueue(Protocol):
    """The dead letters of one topic and group.

    ``list`` is newest first. ``replay`` puts letters back into the group as
    fresh deliveries (attempt 1) and removes them from the queue; ``purge``
    deletes them. Both take letter ids, or ``None`` for all, and return how
    many they touched. Ids that are not (or no longer) there are skipped, so
    both are safe to repeat.
    """

    async def list(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]: ...

    async def count(self) -> int: ...

    async def replay(self, ids: Sequence[str] | None = None) -> int: ...

    async def purge(self, ids: Sequence[str] | None = None) -> int: ...


class Subscription(Protocol):
    """One group member's view of a topic.

    A fetched message belongs to this member until it is settled or the
    subscription closes; the broker holds it from other members (by lease,
    unacked delivery or partition ownership). Nothing is acknowledged except
    through ``settle``. Cancelling ``fetch`` loses nothing: whatever it had
    taken is released by ``close``.
    """

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages``, waiting at most ``timeout`` seconds for the first.

        Every call also keeps what this member holds from expiring where the
        broker leases messages; ``fetch(0, 0)`` does only that.
        """
        ...

    @property
    def taken_over(self) -> int:
        """Messages this member has taken over from members that stopped without
        releasing them (a crash), since it subscribed. The broker logs each takeover
        once, with the count and, where it knows it, the member that held them."""
        ...

    async def settle(
        self,
        acks: Sequence[Message],
        requeues: Sequence[tuple[Message, float]],
        deads: Sequence[tuple[Message, str]],
    ) -> None:
        """Apply outcomes in as few round trips as the broker allows.

        ``acks`` are done; ``requeues`` come back as the next attempt after
        their delay in seconds; ``deads`` go to the dead-letter queue with the
        reason. Raises ``BrokerUnavailable`` if the broker cannot be reached,
        in which case none of the outcomes may be assumed applied.
        """
        ...

    async def lag(self) -> Lag | None:
        """The group's backlog, or ``None`` where the broker cannot tell."""
        ...

    async def close(self) -> None:
        """Stop receiving and release every unsettled message for redelivery.

        Released messages do not count an attempt. Safe to call twice, and
        after the connection was lost (then the broker's own lease or
        session expiry releases them).
        """
        ...


class Broker(Protocol):
    """A connection to one broker, shared by the publisher and every subscription.

    ``connect`` is idempotent and is also how the supervisor reconnects after
    ``BrokerUnavailable``. ``publish`` returns once the broker has confirmed
    every message (durably where the broker is durable). A message with a
    ``deliver_at`` reaches no group before that time; waiting for it is no
    attempt.
    """

    url: str
    capabilities: Capabilities

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """One round trip that says the broker answers now, connecting first if need be.

        Raises ``BrokerUnavailable`` (or ``AuthenticationError``) when it does
        not: health sees the broker through this even with no consumer.
        """
        ...

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None: ...

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> Subscription:
        """Join ``group`` on ``topic`` as one member.

        ``member`` is a stable name for this member (the same after a restart
        of its process; never used by two live members at once). A member
        that subscribes under the name of one that crashed takes back at once
        what that one held, with the attempt counted, where the broker can
        tell; ``None`` makes a fresh member whose crashed predecessor's
        messages come back only when their lease runs out.
        """
        ...

    async def dead_letters(self, topic: str, group: str) -> DeadLetterQueue: ...

    def layout(self, topic: str, group: str) -> Layout:
        """Where this broker keeps ``group``'s retries and dead letters of ``topic``, by name.

        Pure naming: needs no connection and creates nothing.
        """
        ...


def early(messages: list[Message], now: float) -> tuple[list[Message], list[tuple[Message, float]]]:
    """Split fetched ``messages`` into those due and those delivered before their ``deliver_at``.

    Each early one comes with the seconds it has left and its ``attempt``
    taken back by one: holding it back was no attempt, so a subscription
    that requeues it with that attempt for the time left gets it back as
    the attempt it is now. Network adapters whose broker cannot hold a
    published message back apply this to every fetch.
    """
    for message in messages:
        if message.deliver_at > now:
            break
    else:
        return messages, []
    due: list[Message] = []
    held: list[tuple[Message, float]] = []
    for message in messages:
        if message.deliver_at > now:
            message.attempt -= 1
            held.append((message, message.deliver_at - now))
        else:
            due.append(message)
    return due, held


async def due_only(subscription: Subscription, messages: list[Message]) -> list[Message]:
    """``messages`` less those delivered early, which go back to ``subscription``'s group
    as retries for the time they have left, no attempt counted: how a broker with
    delayed retries but no delayed publish holds a delayed message back."""
    due, held = early(messages, time.time())
    if held:
        await subscription.settle((), held, ())
    return due
