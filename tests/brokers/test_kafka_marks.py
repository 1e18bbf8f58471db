"""Kafka delivery marks: written ahead, in the background, covering what is handed out.

Pure logic over a stand-in for the companion group's offsets; the crash
tests in test_kafka.py show what the marks are for.
"""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from aiokafka.structs import TopicPartition

from millstream.brokers.kafka.marks import DeliveryMarks
from millstream.brokers.kafka.offsets import GroupOffsets
from millstream.errors import BrokerUnavailable


class Offsets:
    """The companion group: each commit takes a round trip, and says who waited for it."""

    group = "billing.deliveries"

    def __init__(self) -> None:
        self.commits: list[tuple[dict[TopicPartition, int], asyncio.Task[object] | None]] = []

    async def fetch(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {}

    async def commit(self, marks: dict[TopicPartition, int]) -> None:
        self.commits.append((dict(marks), asyncio.current_task()))
        await asyncio.sleep(0.002)


async def test_a_fetch_waits_for_a_mark_only_when_it_outruns_them() -> None:
    offsets = Offsets()
    marks = DeliveryMarks(cast(GroupOffsets, offsets), "kafka://127.0.0.1:9092")
    a, b = TopicPartition("payments", 0), TopicPartition("payments", 1)
    await marks.take([a, b])
    fetcher = asyncio.current_task()

    await marks.cover({a: 256}, window=1024)  # nothing written yet: this one waits
    assert offsets.commits[0] == ({a: 1280}, fetcher)

    for n in range(512, 40 * 256, 256):  # one fetch of each partition per round
        for tp in (a, b):
            await marks.cover({tp: n}, window=1024)
            assert marks._written[tp] >= n, "a record was handed out beyond its mark"
            await asyncio.sleep(0.003)  # the handlers work; a write lands meanwhile

    waited = [written for written, task in offsets.commits if task is fetcher]
    assert waited == [{a: 1280}, {b: 1536}], "a fetch waited for a mark it had margin for"
    assert len(offsets.commits) <= 2 * 40 * 256 // 512 + 2, "marks are written too often"


async def test_a_background_write_that_failed_fails_the_next_fetch() -> None:
    class Failing(Offsets):
        async def commit(self, marks: dict[TopicPartition, int]) -> None:
            if self.commits:
                raise OSError("connection reset")
            await super().commit(marks)

    offsets = Failing()
    marks = DeliveryMarks(cast(GroupOffsets, offsets), "kafka://127.0.0.1:9092")
    tp = TopicPartition("payments", 0)
    await marks.take([tp])
    await marks.cover({tp: 256}, window=1024)
    await marks.cover({tp: 1024}, window=1024)  # starts a write ahead, which fails
    await asyncio.sleep(0.01)
    with pytest.raises(BrokerUnavailable, match="connection reset"):
        await marks.cover({tp: 1280}, window=1024)
