"""Delivery marks: how a member that takes a partition over knows what was handed out before.

Kafka keeps no delivery count, yet a message redelivered after its consumer
crashed must count an attempt (and the runtime buries one that keeps
killing its consumers). Before handing out records beyond what it handed
out before, a member commits the next offset as a *mark* in the companion
group ``<group>.deliveries``, which has no members. A new owner reads the
marks of the partitions it takes: a record below the mark was handed out
and never settled. Clearing the marks (``clear``) makes a release not
count.

Marks run a window of four fetches (``4 x prefetch`` offsets) ahead of what
was handed out, and a new one is written in the background once half the
window is used, so a fetch waits for a mark only when the writes fall two
fetches behind. The price: after a crash, up to four fetches of messages per
partition that were never handed out also count a second attempt. A mark
says "at least once before", not how often.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka.structs import TopicPartition

from millstream.brokers.kafka.connection import translated
from millstream.brokers.kafka.offsets import GroupOffsets

__all__ = ["DeliveryMarks", "retrieve"]

log = logging.getLogger("millstream.brokers")


class DeliveryMarks:
    """The marks of the partitions one member owns."""

    def __init__(self, offsets: GroupOffsets, url: str) -> None:
        self._offsets = offsets
        self._url = url
        self._found: dict[TopicPartition, int] = {}  # marks there when the partition was taken
        self._written: dict[TopicPartition, int] = {}  # marks this member wrote since
        self._handed: dict[TopicPartition, int] = {}  # next offset to hand out, per partition
        self._writing: asyncio.Future[None] | None = None

    def before(self, tp: TopicPartition) -> int:
        """Offsets of ``tp`` below this were handed out by an earlier owner and never settled."""
        return self._found.get(tp, 0)

    async def take(self, partitions: list[TopicPartition]) -> None:
        """Read the marks of partitions this member now owns."""
        try:
            found = await self._offsets.fetch(partitions) if partitions else {}
        except Exception as exc:  # without marks a new owner only undercounts attempts
            log.warning("group %s: could not read delivery marks: %s", self._offsets.group, exc)
            found = {}
        for tp in partitions:
            self._found[tp] = self._written[tp] = found.get(tp, 0)

    def forget(self, tp: TopicPartition) -> None:
        self._found.pop(tp, None)
        self._written.pop(tp, None)
        self._handed.pop(tp, None)

    async def hand_over(self, partitions: set[TopicPartition]) -> None:
        """Leave marks of ``partitions`` (given up in a rebalance) at what was handed out.

        Marks run ahead of what was handed out; left so, the next owner would
        count the records in between as handed out before. What an earlier
        owner handed out and this one did not yet still counts.
        """
        marks = {
            tp: max(self._handed.get(tp, 0), self._found.get(tp, 0))
            for tp in partitions
            if self._written.get(tp, 0) > 0
        }
        for tp in partitions:
            self.forget(tp)
        if not marks:
            return
        if self._writing is not None:  # a write ahead must not land after this one
            with contextlib.suppress(Exception):
                await self._writing
        await self._offsets.commit(marks)

    async def count_taken_over(
        self,
        partitions: list[TopicPartition],
        commits: GroupOffsets,
        consumer: Any,
        member: str,
        topic: str,
    ) -> int:
        """Count, and log once, what an earlier owner of ``partitions`` handed out and never
        settled: from the group's commit (``commits``) up to the mark, as far as records
        exist. ``consumer`` (aiokafka's) reads where partitions begin and end; ``member``
        and ``topic`` name the new owner in the log."""
        group = commits.group
        try:
            with translated(self._url):
                ranges = await self._unsettled(partitions, commits, consumer)
        except Exception as exc:  # counting is for the operator; the marks still apply
            log.warning("group %s: could not count messages taken over: %s", group, exc)
            return 0
        count = sum(last - first + 1 for _, first, last in ranges)
        if count:
            log.warning(
                "kafka: member %s took over %d message(s) of %s/%s (%s) that another member "
                "handed out and never settled (it stopped without releasing them, or gave the "
                "partition up with handlers still running); each counts an attempt",
                member,
                count,
                topic,
                group,
                ", ".join(f"{tp.topic}[{tp.partition}] offsets {a}-{b}" for tp, a, b in ranges),
            )
        return count

    async def _unsettled(
        self, partitions: list[TopicPartition], commits: GroupOffsets, consumer: Any
    ) -> list[tuple[TopicPartition, int, int]]:
        done = await commits.fetch_or_start(partitions, consumer)
        ends = await consumer.end_offsets(partitions)
        found = []
        for tp in sorted(partitions):
            first = done.get(tp, 0)
            last = min(self.before(tp), ends.get(tp, 0)) - 1
            if last >= first:
                found.append((tp, first, last))
        return found

    async def cover(self, handed: dict[TopicPartition, int], window: int) -> None:
        """Make sure the marks cover ``handed`` (next offsets), ``window`` ahead of them.

        One write serves every partition running low, not only this fetch's:
        writes go one at a time, and a partition that had to wait for another's
        would find its own margin used up.
        """
        self._handed.update(handed)
        writing = self._writing
        if writing is not None and writing.done():
            self._writing = None
            if writing.cancelled() or writing.exception() is not None:
                with translated(self._url):
                    writing.result()  # a background write that failed fails this fetch
        written = self._written
        half = window // 2
        if all(n + half <= written.get(tp, 0) for tp, n in handed.items()):
            return
        if any(n > written.get(tp, 0) for tp, n in handed.items()):
            # This fetch outran the marks: the one case where it waits for them.
            with translated(self._url):
                if self._writing is not None:
                    writing, self._writing = self._writing, None
                    await writing
                if any(n > written.get(tp, 0) for tp, n in handed.items()):
                    await self._write(self._low(window))
        if self._writing is None and (low := self._low(window)):
            self._writing = asyncio.ensure_future(self._write(low))
            self._writing.add_done_callback(retrieve)

    def _low(self, window: int) -> dict[TopicPartition, int]:
        """New marks for every partition with less than half a window of margin left."""
        written = self._written
        return {
            tp: n + window for tp, n in self._handed.items() if n + window // 2 > written.get(tp, 0)
        }

    async def clear(self) -> None:
        """Reset the marks of the owned partitions: what is released does not count."""
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
        marks = {tp: 0 for tp, mark in self._written.items() if mark > 0}
        if marks:
            await self._offsets.commit(marks)

    async def _write(self, marks: dict[TopicPartition, int]) -> None:
        await self._offsets.commit(marks)
        for tp, mark in marks.items():
            if tp in self._found:  # still owned
                self._written[tp] = max(mark, self._written.get(tp, 0))


def retrieve(future: asyncio.Future[None]) -> None:
    """Mark a background write's failure as seen; whoever waits for it next raises it."""
    if not future.cancelled():
        future.exception()
