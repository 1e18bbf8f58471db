"""The in-process state of the memory broker: topics, groups, leases and dead letters.

A topic is an in-memory log with a cursor per group, so each group sees
every message (a new group starts at the oldest message still retained) and
members of a group share them. A delayed publish waits in the topic's
schedule and joins the log when it is due, for every group at once.
Fetched messages are leased to their member; a lease that expires, or a
connection that is cut, puts them back with the attempt counted. One
:class:`MemoryHub` is the broker; every
:class:`~millstream.brokers.memory.broker.MemoryBroker` connected to it is a
client, so tests can give two "processes" one hub.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from millstream.brokers.base import DeadLetter
from millstream.message import NO_HEADERS, Message, OutgoingMessage

__all__ = ["DEFAULT_LEASE", "Backlog", "MemoryHub"]

log = logging.getLogger("millstream.brokers")

DEFAULT_LEASE = 30.0


@dataclass(slots=True)
class _Record:
    offset: int
    out: OutgoingMessage


@dataclass(slots=True)
class _Delivery:
    record: _Record
    attempt: int = 0


@dataclass(slots=True)
class _Lease:
    delivery: _Delivery
    owner: int
    until: float


@dataclass
class _Group:
    cursor: int
    ready: deque[_Delivery] = field(default_factory=deque)
    delayed: list[tuple[float, int, _Delivery]] = field(default_factory=list)
    leases: dict[int, _Lease] = field(default_factory=dict)
    dead: dict[str, DeadLetter] = field(default_factory=dict)
    next_lease_check: float = 0.0
    extended_at: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Backlog:
    """What a group of a topic has yet to settle, split by why it waits."""

    unread: int = 0
    """Published and not yet fetched by the group."""
    ready: int = 0
    """Back for another delivery now: released, replayed, or a retry that is due."""
    leased: int = 0
    """Fetched by a member and not yet settled."""
    delayed: int = 0
    """Retries, and delayed publishes, not yet due."""
    next_due: float | None = None
    """When the first of the delayed ones is due, on the hub's clock."""

    @property
    def active(self) -> int:
        """Messages that need no clock to move: unread, ready or leased."""
        return self.unread + self.ready + self.leased


@dataclass
class _Topic:
    log: deque[_Record] = field(default_factory=deque)
    base: int = 0
    groups: dict[str, _Group] = field(default_factory=dict)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    scheduled: list[tuple[float, int, OutgoingMessage]] = field(default_factory=list)
    """Delayed publishes by due time on the hub's clock; they join ``log`` when due."""

    def append(self, messages: Sequence[OutgoingMessage]) -> None:
        offset = self.base + len(self.log)
        self.log.extend(_Record(offset + i, out) for i, out in enumerate(messages))

    def publish_due(self, now: float) -> None:
        """Move the delayed publishes that came due into the log, in due order."""
        scheduled = self.scheduled
        if scheduled and scheduled[0][0] <= now:
            due = []
            while scheduled and scheduled[0][0] <= now:
                due.append(heapq.heappop(scheduled)[2])
            self.append(due)

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _next_due(topic: _Topic, group: _Group) -> float | None:
    """When the group's first delayed retry or the topic's first delayed publish is due."""
    dues = [heap[0][0] for heap in (group.delayed, topic.scheduled) if heap]
    return min(dues, default=None)


class MemoryHub:
    """The broker state shared by every :class:`MemoryBroker` connected to it.

    ``clock`` tells the time leases and retry delays are measured on
    (seconds, never going back). A test can give a clock it moves itself,
    then ``wake()`` the waiting fetches, so a retry due in 30 s is due at
    once.
    """

    def __init__(
        self, lease: float = DEFAULT_LEASE, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lease = lease
        self.clock = clock
        self._topics: dict[str, _Topic] = {}
        self._receipts = itertools.count(1)
        self._sequence = itertools.count(1)
        self._owners = itertools.count(1)
        self._names: dict[int, str] = {}  # owner id -> the member name it subscribed under
        self._members: dict[tuple[str, str, str], int] = {}  # (topic, group, name) -> owner

    def new_owner(self, topic: str, group: str, member: str | None) -> tuple[int, int]:
        """An id for a new group member, unique across every connection to this hub, and
        how many messages it took back from the crashed member of the same name."""
        owner = next(self._owners)
        if member is None:
            return owner, 0
        self._names[owner] = member
        previous = self._members.get((topic, group, member))
        self._members[topic, group, member] = owner
        if previous is None:
            return owner, 0
        taken = self.release(topic, group, previous, count_attempt=True)
        if taken:
            log.warning(
                "memory: member %s took back %d message(s) of %s/%s that it held before it "
                "stopped without releasing them",
                member,
                taken,
                topic,
                group,
            )
        return owner, taken

    def name(self, owner: int) -> str:
        return self._names.get(owner, f"#{owner}")

    def topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = _Topic()
        return topic

    def group(self, topic_name: str, group_name: str) -> _Group:
        topic = self.topic(topic_name)
        group = topic.groups.get(group_name)
        if group is None:
            group = topic.groups[group_name] = _Group(cursor=topic.base)
        return group

    def publish(self, topic_name: str, messages: Sequence[OutgoingMessage]) -> None:
        topic = self.topic(topic_name)
        if any(out.deliver_at is not None for out in messages):
            messages = self._schedule(topic, messages)
        topic.append(messages)
        topic.wake()

    def _schedule(
        self, topic: _Topic, messages: Sequence[OutgoingMessage]
    ) -> list[OutgoingMessage]:
        """Park the messages not yet due in the topic's schedule; returns the others."""
        now, wall = self.clock(), time.time()
        at_once = []
        for out in messages:
            left = 0.0 if out.deliver_at is None else out.deliver_at - wall
            if left > 0:
                heapq.heappush(topic.scheduled, (now + left, next(self._sequence), out))
            else:
                at_once.append(out)
        return at_once

    def take(
        self, topic_name: str, group_name: str, owner: int, limit: int
    ) -> tuple[list[Message], float | None, int]:
        """Lease up to ``limit`` deliveries; also returns when the next delayed one is due,
        and how many deliveries whose lease ran out it put back for this take."""
        topic = self.topic(topic_name)
        group = self.group(topic_name, group_name)
        now = self.clock()
        expired = 0
        if now >= group.next_lease_check and group.leases:
            expired = self._expire(topic_name, group_name, group, owner, now)
        self._extend(group, owner, now)
        topic.publish_due(now)
        while group.delayed and group.delayed[0][0] <= now:
            group.ready.append(heapq.heappop(group.delayed)[2])
        taken: list[_Delivery] = []
        while group.ready and len(taken) < limit:
            taken.append(group.ready.popleft())
        end = topic.base + len(topic.log)
        if len(taken) < limit and group.cursor < end:
            start = group.cursor - topic.base
            count = min(limit - len(taken), end - group.cursor)
            log = topic.log
            taken.extend(_Delivery(log[start + i]) for i in range(count))
            group.cursor += count
            self._trim(topic)
        until = now + self.lease
        messages = []
        for delivery in taken:
            delivery.attempt += 1
            receipt = next(self._receipts)
            group.leases[receipt] = _Lease(delivery, owner, until)
            out = delivery.record.out
            messages.append(
                Message(
                    id=out.id,
                    topic=topic_name,
                    payload=out.payload,
                    key=out.key,
                    headers=dict(out.headers) if out.headers else NO_HEADERS,
                    attempt=delivery.attempt,
                    published_at=out.published_at,
                    offset=delivery.record.offset,
                    receipt=receipt,
                )
            )
        return messages, _next_due(topic, group), expired

    def settle(
        self,
        topic_name: str,
        group_name: str,
        owner: int,
        acks: Sequence[Message],
        retries: Sequence[tuple[Message, float]],
        deads: Sequence[tuple[Message, str]],
    ) -> None:
        group = self.group(topic_name, group_name)
        leases = group.leases
        for message in acks:
            lease = leases.get(message.receipt)
            if lease is not None and lease.owner == owner:
                del leases[message.receipt]
        now = self.clock()
        for message, delay in retries:
            lease = leases.get(message.receipt)
            if lease is not None and lease.owner == owner:
                del leases[message.receipt]
                heapq.heappush(group.delayed, (now + delay, next(self._sequence), lease.delivery))
        for message, reason in deads:
            lease = leases.get(message.receipt)
            if lease is not None and lease.owner == owner:
                del leases[message.receipt]
                self._bury(topic_name, group_name, group, lease.delivery, reason)
        if retries:
            self.topic(topic_name).wake()

    def release(self, topic_name: str, group_name: str, owner: int, *, count_attempt: bool) -> int:
        """Give back every delivery ``owner`` holds, oldest first; returns how many."""
        group = self.group(topic_name, group_name)
        held = [(receipt, lease) for receipt, lease in group.leases.items() if lease.owner == owner]
        if not held:
            return 0
        for receipt, _ in held:
            del group.leases[receipt]
        back = sorted((lease.delivery for _, lease in held), key=lambda d: d.record.offset)
        for delivery in back:
            if not count_attempt:
                delivery.attempt -= 1
        group.ready.extendleft(reversed(back))
        self.topic(topic_name).wake()
        return len(back)

    def lag(self, topic_name: str, group_name: str) -> int:
        topic = self.topic(topic_name)
        group = self.group(topic_name, group_name)
        topic.publish_due(self.clock())
        unread = topic.base + len(topic.log) - group.cursor
        waiting = len(group.delayed) + len(topic.scheduled)
        return unread + len(group.ready) + waiting + len(group.leases)

    def backlog(self, topic_name: str, group_name: str) -> Backlog:
        """What ``group_name`` of ``topic_name`` has yet to settle; nothing for an unknown one."""
        topic = self._topics.get(topic_name)
        group = topic.groups.get(group_name) if topic is not None else None
        if topic is None or group is None:
            return Backlog()
        now = self.clock()
        topic.publish_due(now)
        due = sum(1 for when, _, _ in group.delayed if when <= now)
        later = [when for when, _, _ in group.delayed if when > now]
        return Backlog(
            unread=topic.base + len(topic.log) - group.cursor,
            ready=len(group.ready) + due,
            leased=len(group.leases),
            delayed=len(later) + len(topic.scheduled),
            next_due=min(later + [when for when, _, _ in topic.scheduled[:1]], default=None),
        )

    def wake(self) -> None:
        """Wake every waiting fetch to look again: the clock moved, retries may be due."""
        for topic in self._topics.values():
            topic.wake()

    def dead_letters(self, topic_name: str, group_name: str) -> dict[str, DeadLetter]:
        return self.group(topic_name, group_name).dead

    def replay(self, topic_name: str, group_name: str, ids: Sequence[str] | None) -> int:
        group = self.group(topic_name, group_name)
        chosen = list(group.dead) if ids is None else [i for i in ids if i in group.dead]
        for letter_id in chosen:
            letter = group.dead.pop(letter_id)
            out = OutgoingMessage(
                payload=letter.payload,
                key=letter.key,
                headers=dict(letter.headers),
                id=letter.message_id,
            )
            group.ready.append(_Delivery(_Record(-1, out)))
        if chosen:
            self.topic(topic_name).wake()
        return len(chosen)

    def _bury(
        self, topic_name: str, group_name: str, group: _Group, delivery: _Delivery, reason: str
    ) -> None:
        out = delivery.record.out
        letter_id = f"{out.id}-{next(self._sequence)}"
        group.dead[letter_id] = DeadLetter(
            id=letter_id,
            message_id=out.id,
            topic=topic_name,
            group=group_name,
            payload=out.payload,
            key=out.key,
            headers=dict(out.headers),
            attempts=delivery.attempt,
            error=reason,
            failed_at=time.time(),
        )

    def _extend(self, group: _Group, owner: int, now: float) -> None:
        """Push out ``owner``'s leases every quarter lease: it is alive and calling."""
        if now - group.extended_at.get(owner, 0.0) < self.lease / 4:
            return
        group.extended_at[owner] = now
        half = now + self.lease / 2
        extended = now + self.lease
        for lease in group.leases.values():
            if lease.owner == owner and lease.until < half:
                lease.until = extended

    def _expire(
        self, topic_name: str, group_name: str, group: _Group, taker: int, now: float
    ) -> int:
        expired = [receipt for receipt, lease in group.leases.items() if lease.until <= now]
        holders = {group.leases[receipt].owner for receipt in expired}
        back = [group.leases.pop(receipt).delivery for receipt in expired]
        back.sort(key=lambda d: d.record.offset)
        group.ready.extendleft(reversed(back))
        group.next_lease_check = now + self.lease / 4
        if back:
            log.warning(
                "memory: member %s took over %d message(s) of %s/%s held by %s, whose "
                "lease of %gs ran out",
                self.name(taker),
                len(back),
                topic_name,
                group_name,
                ", ".join(sorted(self.name(holder) for holder in holders)),
                self.lease,
            )
        return len(back)

    def _trim(self, topic: _Topic) -> None:
        """Drop log records every group has read past."""
        lowest = min(group.cursor for group in topic.groups.values())
        drop = lowest - topic.base
        if drop > 4096:
            for _ in range(drop):
                topic.log.popleft()
            topic.base = lowest
