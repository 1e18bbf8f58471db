"""The dead letters of a topic and group on Kafka: ``<topic>.dlq``, filtered by group.

Kafka cannot delete a record, so replaying or purging a letter appends a
*tombstone* (a record with ``ms-tombstone: <letter id>`` and the group) to
the same topic; a letter with a tombstone is gone. A tombstone set rather
than a "purged up to" commit, because letters are replayed and purged one
by one, in any order. A letter's id is ``<partition>-<offset>`` in the
dead-letter topic. Listing reads the whole topic (dead-letter topics are
small, and the topic's retention bounds them).
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from millstream.brokers.base import DeadLetter
from millstream.brokers.kafka.connection import KafkaConnection, translated
from millstream.brokers.kafka.topics import send
from millstream.brokers.kafka.wire import (
    HEADER_GROUP,
    HEADER_TOMBSTONE,
    dead_letter,
    dlq_topic,
    read_headers,
    replay_record,
    retry_topic,
    tombstone,
)

__all__ = ["KafkaDeadLetters"]

_READ_WITHIN = 30.0  # seconds a listing may take before it gives up


class KafkaDeadLetters:
    """The live (not replayed, not purged) letters of one group in ``<topic>.dlq``."""

    def __init__(self, connection: KafkaConnection, topic: str, group: str) -> None:
        self._connection = connection
        self.topic = topic
        self.group = group
        self._dlq = dlq_topic(topic)

    async def list(self, limit: int = 100, offset: int = 0) -> builtins.list[DeadLetter]:
        """Newest first."""
        if limit <= 0:
            return []
        letters = [letter for letter, _ in await self._live()]
        letters.reverse()
        return letters[offset : offset + limit]

    async def count(self) -> int:
        return len(await self._live())

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        """Into the group's retry topic, due now, as attempt 1; then tombstoned. Oldest first."""
        chosen = self._chosen(await self._live(), ids)
        if not chosen:
            return 0
        stamp = int(time.time() * 1000)
        records = [replay_record(record, stamp) for _letter, record in chosen]
        await send(self._connection, retry_topic(self.topic, self.group), records)
        await self._bury([letter.id for letter, _ in chosen])
        return len(chosen)

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        """Tombstone the letters; returns how many."""
        chosen = self._chosen(await self._live(), ids)
        await self._bury([letter.id for letter, _ in chosen])
        return len(chosen)

    @staticmethod
    def _chosen(
        live: builtins.list[tuple[DeadLetter, Any]], ids: Sequence[str] | None
    ) -> builtins.list[tuple[DeadLetter, Any]]:
        if ids is None:
            return live
        wanted = set(ids)
        return [(letter, record) for letter, record in live if letter.id in wanted]

    async def _bury(self, ids: builtins.list[str]) -> None:
        if ids:
            stamp = int(time.time() * 1000)
            tombstones = [tombstone(i, self.group, stamp) for i in ids]
            await send(self._connection, self._dlq, tombstones)

    async def _live(self) -> builtins.list[tuple[DeadLetter, Any]]:
        """This group's letters without a tombstone, oldest first (by failure time)."""
        letters: dict[str, tuple[DeadLetter, Any]] = {}
        gone: set[str] = set()
        group = self.group
        for record in await self._read_all():
            letter = dead_letter(self.topic, record)
            if letter is None:
                ours, _ = read_headers(record.headers)
                if ours.get(HEADER_GROUP) == group:
                    gone.add(ours[HEADER_TOMBSTONE])
            elif letter.group == group:
                letters[letter.id] = (letter, record)
        live = [entry for key, entry in letters.items() if key not in gone]
        live.sort(key=lambda entry: (entry[0].failed_at, entry[0].id))
        return live

    async def _read_all(self) -> builtins.list[Any]:
        """Every record of the dead-letter topic, read by a member of no group."""
        connection = self._connection
        producer = connection.producer()
        with translated(connection.url):
            cluster = await producer.client.fetch_all_metadata()
        found = cluster.partitions_for_topic(self._dlq)
        if not found:
            return []
        partitions = [TopicPartition(self._dlq, p) for p in sorted(found)]
        reader = AIOKafkaConsumer(
            **connection.options.client(),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
        )
        connection.adopt(reader._client)
        records: builtins.list[Any] = []
        with translated(connection.url):
            await reader.start()
            try:
                reader.assign(partitions)
                await reader.seek_to_beginning(*partitions)
                deadline = time.monotonic() + _READ_WITHIN
                while time.monotonic() < deadline:
                    batch = await reader.getmany(timeout_ms=100, max_records=10_000)
                    for part in batch.values():
                        records += part
                    if not batch and await _at_end(reader, partitions):
                        break
            finally:
                await reader.stop()
        return records


async def _at_end(reader: AIOKafkaConsumer, partitions: builtins.list[TopicPartition]) -> bool:
    """Every partition read up to the high watermark its last fetch reported."""
    for tp in partitions:
        high = reader.highwater(tp)
        if high is None or await reader.position(tp) < high:
            return False
    return True
