"""``ThroughputHistory``: each consumer's counts per time bucket over a bounded window.

One task samples every consumer's counters (``ConsumerStats``) once per
bucket; nothing runs per message. A bucket holds how many messages each
consumer consumed, acked, retried and dead-lettered since the sample
before; the window keeps the newest ``window / bucket`` of them, in memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import NamedTuple

from millstream.runtime.consumer import ConsumerRuntime
from millstream.runtime.stats import ConsumerStats

__all__ = ["Counts", "Sample", "ThroughputHistory"]


class Counts(NamedTuple):
    consumed: int
    acked: int
    retried: int
    dead: int

    @classmethod
    def of(cls, stats: ConsumerStats) -> Counts:
        return cls(stats.consumed, stats.acked, stats.retried, stats.dead)


class Sample(NamedTuple):
    """One bucket: when it ended, and each consumer's counts within it."""

    at: float
    counts: dict[str, Counts]


class ThroughputHistory:
    """The newest ``window`` seconds of throughput, in buckets of ``bucket`` seconds."""

    def __init__(self, bucket: float = 5.0, window: float = 600.0) -> None:
        if bucket <= 0 or window < bucket:
            raise ValueError(f"bucket={bucket} must be positive and window={window} at least that")
        self.bucket = bucket
        self.window = window
        self.samples: deque[Sample] = deque(maxlen=round(window / bucket))
        self._totals: dict[str, tuple[ConsumerStats, Counts]] = {}

    def reset(self, consumers: Mapping[str, ConsumerRuntime]) -> None:
        """Forget every bucket; the next sample counts from the consumers' counters now."""
        self.samples.clear()
        self._totals = {name: (c.stats, Counts.of(c.stats)) for name, c in consumers.items()}

    def sample(self, consumers: Mapping[str, ConsumerRuntime], at: float | None = None) -> Sample:
        """Close a bucket: what each consumer did since the last sample."""
        counts: dict[str, Counts] = {}
        totals: dict[str, tuple[ConsumerStats, Counts]] = {}
        for name, consumer in consumers.items():
            stats = consumer.stats
            now = Counts.of(stats)
            before = self._totals.get(name)
            # A consumer made anew (the app restarted) counts from zero again.
            if before is None or before[0] is not stats:
                before = (stats, Counts(0, 0, 0, 0))
            counts[name] = Counts(*(a - b for a, b in zip(now, before[1], strict=True)))
            totals[name] = (stats, now)
        self._totals = totals
        sample = Sample(time.time() if at is None else at, counts)
        self.samples.append(sample)
        return sample

    async def run(self, consumers: Callable[[], Mapping[str, ConsumerRuntime]]) -> None:
        """Sample ``consumers()`` every bucket until cancelled."""
        self.reset(consumers())
        while True:
            await asyncio.sleep(self.bucket)
            self.sample(consumers())
