"""One member of a consumer group on Kafka: fetch, settle, lag, release.

A member reads the topic and its group's retry topic ``<topic>.retry.<group>``
with one ``getmany``. What it hands out is tracked per partition
(:class:`~millstream.brokers.kafka.tracker.OffsetTracker`); settling produces the
batch's retries and dead letters first, waits for them, then commits the
highest contiguous done offset of every partition that advanced, in one
commit. Nothing past an unsettled offset is ever committed.

- **Delayed retries and publishes.** A retry record carries its due time
  (``ms-due``), as does a delayed publish, which waits in ``<topic>.delayed``
  (read by every group). When the head of such a partition is not due, the
  member seeks back to it and pauses that partition until it is: the handler
  never sleeps, and other partitions flow meanwhile. Records behind a
  later-due head wait for it (one retry topic per group and one delay topic
  per topic, not one per delay tier).
- **Rebalancing.** A revoked partition waits up to ``drain`` seconds (and at
  most most of the rebalance timeout) for its messages in flight to settle,
  then commits and is given up. Outcomes of messages whose partition was
  given up are dropped: the new owner has them again.
- **Attempts after a crash.** Kafka keeps no delivery count: delivery marks
  in the companion group ``<group>.deliveries`` tell a new owner what was
  handed out and never settled (:mod:`millstream.brokers.kafka.marks`); it
  counts those in ``taken_over`` and logs them once per assignment. A member
  giving partitions up in a rebalance leaves the marks at what it handed out.
- **Lost connections.** aiokafka reconnects silently; a broken connection
  here (or a request unanswered for the request timeout: a silent
  partition) ends the subscription with ``BrokerUnavailable``, so the
  supervisor reports RECONNECTING and the member rejoins. A commit under way
  stops waiting then (aiokafka would retry it for ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka import errors as kafka_errors
from aiokafka.structs import TopicPartition

from millstream.brokers.base import Lag
from millstream.brokers.kafka.connection import KafkaConnection, translated
from millstream.brokers.kafka.marks import DeliveryMarks
from millstream.brokers.kafka.offsets import GroupOffsets, group_lag
from millstream.brokers.kafka.topics import send
from millstream.brokers.kafka.tracker import OffsetTracker
from millstream.brokers.kafka.wire import (
    Record,
    dead_letter_record,
    delay_topic,
    dlq_topic,
    due,
    messages,
    retry_record,
    retry_topic,
)
from millstream.errors import BrokerUnavailable
from millstream.message import Message
from millstream.urls import redact

__all__ = ["KafkaSubscription"]

log = logging.getLogger("millstream.brokers")


_NOWHERE = TopicPartition("", -1)  # assigned to no one: polling it takes nothing


class _Claim:
    """One ownership of a partition: the receipt of every message it handed out.

    Outcomes count only while the claim holds: once the partition is revoked
    (even if it comes back), messages of the old claim are the new owner's.
    """

    __slots__ = ("tp",)

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp


class KafkaSubscription:
    """A group member; what it fetched is held by owning its partitions until settled."""

    def __init__(
        self,
        connection: KafkaConnection,
        consumer: AIOKafkaConsumer,
        topic: str,
        group: str,
        prefetch: int,
        member: str | None = None,
        on_close: Callable[[KafkaSubscription], None] | None = None,
    ) -> None:
        self.taken_over = 0  # messages taken from members that crashed
        self.member = member
        self._connection = connection
        self._url = connection.url
        self._on_close = on_close
        self._consumer = consumer
        self.topic = topic
        self.group = group
        self.retry_topic = retry_topic(topic, group)
        self.delay_topic = delay_topic(topic)
        self.dlq_topic = dlq_topic(topic)
        self._trackers = {
            topic: OffsetTracker(),
            self.retry_topic: OffsetTracker(),
            self.delay_topic: OffsetTracker(),
        }
        self._owned: dict[TopicPartition, _Claim] = {}
        self._paused: dict[TopicPartition, float] = {}  # retry partition -> head due (epoch s)
        self._settled = asyncio.Event()
        self._assigned = asyncio.Event()
        self._lost: str | None = None
        self._lost_signal = asyncio.Event()
        self._closing = False
        self._closed = False
        options = connection.options
        self._drain = min(options.drain, options.rebalance_timeout * 0.8)
        deliveries = GroupOffsets(consumer._client, f"{group}.deliveries")
        self._marks = DeliveryMarks(deliveries, connection.url)
        self._marks_window = 4 * prefetch
        self._commits = GroupOffsets(consumer._client, group)

    async def start(self) -> None:
        """Join the group; returns once this member has its first assignment."""
        consumer = self._consumer
        consumer.subscribe(list(self._trackers), listener=_Listener(self))
        options = self._connection.options
        # A join may take two rounds (the member id, then the join) and a sync.
        within = options.session_timeout + 2 * options.join_timeout
        with translated(self._url):
            try:
                # aiokafka's start waits for the first join: bound it as a whole.
                async with asyncio.timeout(within):
                    await consumer.start()
                    await self._assigned.wait()
            except TimeoutError:
                raise BrokerUnavailable(
                    f"broker {redact(self._url)}: no partitions of {self.topic!r} "
                    f"were assigned to a member of group {self.group!r} within {within:g}s"
                ) from None
        self._check()

    def connection_lost(self, reason: str) -> None:
        """A connection of this member broke: the next call ends the subscription."""
        if not self._closing and self._lost is None:
            self._lost = reason
            self._lost_signal.set()

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages`` of owned partitions, waiting up to ``timeout`` for the first.

        ``fetch(0, 0)`` only resumes retry and delay partitions whose head came due.
        """
        self._check()
        now = time.time()
        self._resume_due(now)
        if max_messages <= 0:
            # A poll that takes nothing: while slow handlers keep the runtime
            # from fetching, aiokafka would count the time against
            # max_poll_interval and leave the group, handing their partitions
            # (and the messages in their hands) to another member.
            with translated(self._url):
                await self._consumer.getmany(_NOWHERE, timeout_ms=0)
            return []
        if self._paused:
            timeout = max(0.0, min(timeout, min(self._paused.values()) - now))
        with translated(self._url):
            batch = await self._consumer.getmany(
                timeout_ms=round(timeout * 1000), max_records=max_messages
            )
        self._check()
        if not batch:
            return []
        taken: list[Message] = []
        handed: dict[TopicPartition, int] = {}
        topic = self.topic
        for tp, records in batch.items():
            claim = self._owned.get(tp)
            if claim is None:
                continue
            if tp.topic != topic:  # a retry or delay partition: each record has its time
                records = self._due(tp, records)
            if not records:
                continue
            taken += messages(topic, records, self._marks.before(tp), claim)
            self._trackers[tp.topic].started(tp.partition, [r.offset for r in records])
            handed[tp] = records[-1].offset + 1
        if handed:
            await self._marks.cover(handed, self._marks_window)
        return taken

    def _due(self, tp: TopicPartition, records: list[Any]) -> list[Any]:
        """The records of a retry partition up to the first not due; that one is read
        again when it is, and nothing behind it passes meanwhile."""
        now = time.time()
        for i, record in enumerate(records):
            at = due(record)
            if at > now:
                self._consumer.seek(tp, record.offset)
                self._consumer.pause(tp)
                self._paused[tp] = at
                return records[:i]
        return records

    def _resume_due(self, now: float) -> None:
        due = [tp for tp, at in self._paused.items() if at <= now]
        for tp in due:
            del self._paused[tp]
        owned = [tp for tp in due if tp in self._owned]
        if owned:
            self._consumer.resume(*owned)

    async def settle(
        self,
        acks: Sequence[Message],
        requeues: Sequence[tuple[Message, float]],
        deads: Sequence[tuple[Message, str]],
    ) -> None:
        """Produce requeues and dead letters, then commit contiguous progress: a round trip each."""
        self._check()
        now = time.time()
        stamp = int(now * 1000)
        retry_records: list[Record] = [
            retry_record(msg, now + max(0.0, delay), stamp)
            for msg, delay in requeues
            if self._mine(msg) is not None
        ]
        dead_records: list[Record] = []
        for msg, reason in deads:
            if (tp := self._mine(msg)) is not None and msg.offset is not None:
                source = (tp.topic, tp.partition, msg.offset)
                dead_records.append(dead_letter_record(msg, self.group, source, reason, stamp))
        if retry_records or dead_records:
            sends = ((self.retry_topic, retry_records), (self.dlq_topic, dead_records))
            await asyncio.gather(*(send(self._connection, t, r) for t, r in sends if r))
        done: dict[_Claim, list[int]] = {}  # offsets by claim: one tracker call each
        for msg in itertools.chain(acks, (m for m, _ in requeues), (m for m, _ in deads)):
            claim = msg.receipt
            if type(claim) is _Claim and msg.offset is not None:
                if (offsets := done.get(claim)) is None:
                    offsets = done[claim] = []
                offsets.append(msg.offset)
        for claim, offsets in done.items():
            if self._holds(claim):
                self._trackers[claim.tp.topic].finished(claim.tp.partition, offsets)
        await self._commit()
        self._settled.set()

    def _mine(self, msg: Message) -> TopicPartition | None:
        """The partition of a delivery this member made and still owns, else ``None``."""
        claim = msg.receipt
        return claim.tp if self._holds(claim) else None

    def _holds(self, claim: object) -> TypeGuard[_Claim]:
        """Whether ``claim`` is this member's current ownership of its partition."""
        return type(claim) is _Claim and self._owned.get(claim.tp) is claim

    async def _commit(self) -> None:
        """Commit contiguous progress of the owned partitions; returns once it landed.

        Settling waits for it: an acked message must not come back after a
        crash right after ``settle`` returned. A commit that fails leaves the
        offsets where they were: their messages are read again.
        """
        offsets = {
            tp: offset
            for topic, tracker in self._trackers.items()
            for partition, offset in tracker.committable().items()
            if (tp := TopicPartition(topic, partition)) in self._owned
        }
        if offsets:
            with translated(self._url):
                await self._send_commit(offsets)

    async def _send_commit(self, offsets: dict[TopicPartition, int]) -> None:
        # aiokafka retries a commit until the coordinator answers, for ever over
        # a dead network: a broken connection of this member ends the wait.
        committing = asyncio.ensure_future(self._consumer.commit(offsets))
        lost = asyncio.ensure_future(self._lost_signal.wait())
        try:
            await asyncio.wait((committing, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not committing.done():
                committing.cancel()
        if committing.cancelled():
            self._check()
        try:
            committing.result()
        except kafka_errors.CommitFailedError as exc:
            # The group moved on without us (rebalanced): these partitions are
            # someone else's now and will be read again from their last commit.
            log.warning("group %s: commit refused after a rebalance: %s", self.group, exc)

    async def lag(self) -> Lag | None:
        """Per topic partition: end offset minus the group's commit; plus the retry backlog."""
        self._check()
        with translated(self._url):
            return await group_lag(
                self._consumer,
                self._commits,
                self.topic,
                (self.retry_topic, self.delay_topic),
                self._owned,
            )

    async def close(self) -> None:
        """Commit what is done, clear this member's delivery marks, leave the group. Safe twice.

        What was fetched and not settled is not committed, so the next owner
        reads it again, with the attempt it had.
        """
        if self._closed:
            return
        self._closed = self._closing = True
        if self._on_close is not None:
            self._on_close(self)
        timeout = self._connection.options.request_timeout
        if self._lost is None and self._owned:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._release(), timeout)
        self._owned.clear()
        stopping = asyncio.ensure_future(asyncio.wait_for(self._consumer.stop(), timeout))
        if self._lost is not None:
            # Leaving over a broken network can take the whole request timeout;
            # the supervisor must not wait for it to report and rejoin.
            self._connection.in_background(stopping)
            return
        with contextlib.suppress(Exception):
            await stopping

    async def _release(self) -> None:
        await self._commit()
        await self._marks.clear()

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Wait (bounded) for in-flight messages of ``partitions``, commit, give them up."""
        if not self._closing and self._lost is None:
            deadline = time.monotonic() + self._drain
            while self._pending(partitions) and (left := deadline - time.monotonic()) > 0:
                self._settled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled.wait(), left)
            with contextlib.suppress(Exception):
                await self._commit()
            if self._pending(partitions):
                log.warning(
                    "group %s: gave up %d partition(s) with messages still in flight after "
                    "drain=%gs; the new owner handles them again",
                    self.group,
                    len(partitions),
                    self._drain,
                )
        for tp in partitions:
            self._owned.pop(tp, None)
            self._paused.pop(tp, None)
            self._trackers[tp.topic].forget(tp.partition)
        if self._closing or self._lost is not None:
            for tp in partitions:
                self._marks.forget(tp)
            return
        try:
            await self._marks.hand_over(partitions)
        except Exception as exc:  # the next owner then counts a few attempts too many
            log.warning("group %s: could not leave exact delivery marks: %s", self.group, exc)

    def _pending(self, partitions: set[TopicPartition]) -> bool:
        return any(self._trackers[tp.topic].pending(tp.partition) for tp in partitions)

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        """Take ``partitions`` over: read their delivery marks, then fetch from their commits."""
        fresh = [tp for tp in partitions if tp not in self._owned]
        await self._marks.take(fresh)
        for tp in fresh:
            self._owned[tp] = _Claim(tp)
        marked = [tp for tp in fresh if self._marks.before(tp) > 0]
        if marked:
            member = self.member or self._consumer._client._client_id
            self.taken_over += await self._marks.count_taken_over(
                marked, self._commits, self._consumer, member, self.topic
            )
        self._assigned.set()

    def _check(self) -> None:
        if self._closed:
            raise BrokerUnavailable(
                f"broker {redact(self._url)}: subscription to {self.topic!r} is closed"
            )
        if self._lost is not None:
            raise BrokerUnavailable(f"broker {redact(self._url)}: {self._lost}")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, subscription: KafkaSubscription) -> None:
        self._subscription = subscription

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._subscription.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._subscription.assigned(set(assigned))
