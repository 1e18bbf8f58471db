"""Read and write one consumer group's committed offsets without being a member of it.

Two uses: the lag reads the group's commits for every partition (also the
ones other members own), and each member writes its delivery marks (see
:mod:`millstream.brokers.kafka_subscription`) as the commits of a companion
group that has no members. Requests go to the group's coordinator over the
member's own client, one round trip for all partitions.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.client import ConnectionGroup
from aiokafka.protocol.commit import OffsetCommitRequest, OffsetFetchRequest
from aiokafka.structs import TopicPartition

__all__ = ["GroupOffsets"]

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
