"""Read and write one consumer group's committed offsets without being a member of it.

Two uses: the lag (:func:`group_lag`) reads the group's commits for every partition (also the
ones other members own), and each member writes its delivery marks (see
:mod:`millstream.brokers.kafka.marks`) as the commits of a companion
group that has no members. Requests go to the group's coordinator over the
member's own client, one round trip for all partitions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Sequence
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.client import ConnectionGroup
from aiokafka.protocol.commit import OffsetCommitRequest, OffsetFetchRequest
from aiokafka.structs import TopicPartition

from millstream.brokers.base import Lag

__all__ = ["GroupOffsets", "group_lag"]

_GROUP = 0  # FindCoordinator key type of a consumer group
_MOVED = (
    kafka_errors.NotCoordinatorForGroupError,
    kafka_errors.GroupCoordinatorNotAvailableError,
    kafka_errors.GroupLoadInProgressError,
)


class GroupOffsets:
    """The committed offsets of ``group``, through ``client`` (an aiokafka client)."""

    def __init__(self, client: Any, group: str) -> None:
        self._client = client
        self.group = group
        self._node: int | None = None

    async def fetch(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The committed offset of each partition that has one."""
        by_topic: dict[str, list[int]] = defaultdict(list)
        for tp in partitions:
            by_topic[tp.topic].append(tp.partition)
        response = await self._send(OffsetFetchRequest(self.group, list(by_topic.items())))
        found: dict[TopicPartition, int] = {}
        for topic, entries in response.topics:
            for partition, offset, _metadata, code in entries:
                self._check(code)
                if offset >= 0:
                    found[TopicPartition(topic, partition)] = offset
        return found

    async def fetch_or_start(
        self, partitions: list[TopicPartition], consumer: Any
    ) -> dict[TopicPartition, int]:
        """The committed offset of each partition, or where it begins if it has none
        (``consumer``, aiokafka's, reads that)."""
        committed = await self.fetch(partitions)
        missing = [tp for tp in partitions if tp not in committed]
        if missing:
            committed.update(await consumer.beginning_offsets(missing))
        return committed

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` as a group with no members does (generation -1)."""
        by_topic: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        for tp, offset in offsets.items():
            by_topic[tp.topic].append((tp.partition, offset, ""))
        request = OffsetCommitRequest(self.group, -1, "", -1, list(by_topic.items()))
        response = await self._send(request)
        for _topic, entries in response.topics:
            for _partition, code in entries:
                self._check(code)

    async def _send(self, request: Any) -> Any:
        if self._node is None:
            self._node = await self._client.coordinator_lookup(_GROUP, self.group)
        try:
            # The coordination connection: on the default one a request waits
            # behind the fetcher's long polls.
            return await self._client.send(self._node, request, group=ConnectionGroup.COORDINATION)
        except (kafka_errors.KafkaConnectionError, kafka_errors.NodeNotReadyError):
            self._node = None
            raise

    def _check(self, code: int) -> None:
        if code:
            error = kafka_errors.for_code(code)
            if issubclass(error, _MOVED):
                self._node = None
            raise error(f"group {self.group!r}")


async def group_lag(
    consumer: Any,
    commits: GroupOffsets,
    topic: str,
    waiting: Sequence[str],
    owned: Container[Any],
) -> Lag | None:
    """The lag of ``commits``' group: per partition of ``topic``, its end offset minus the
    group's commit; the total adds the backlog of the ``waiting`` topics (retries, delayed
    publishes). ``owned`` partitions (a member's) also count their last fetch's high
    watermark."""
    cluster = consumer._client.cluster
    partitions = [
        TopicPartition(name, p)
        for name in (topic, *waiting)
        for p in sorted(cluster.partitions_for_topic(name) or ())
    ]
    if not partitions:
        return None
    ends = await consumer.end_offsets(partitions)
    done = await commits.fetch_or_start(partitions, consumer)
    by_partition: dict[int, int] = {}
    retrying = 0
    for tp in partitions:
        end = ends.get(tp, 0)
        if tp in owned:
            # The high watermark of the last fetch can be ahead of what
            # ListOffsets answered a moment ago.
            end = max(end, consumer.highwater(tp) or 0)
        behind = max(0, end - done.get(tp, 0))
        if tp.topic == topic:
            by_partition[tp.partition] = behind
        else:
            retrying += behind
    return Lag(total=sum(by_partition.values()) + retrying, partitions=by_partition)
