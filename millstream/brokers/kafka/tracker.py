"""Contiguous-offset tracking, per partition a Kafka member reads.

Messages of one partition finish out of order when handled concurrently, but
Kafka can only commit "everything before offset N". The tracker
commits the highest offset below which every message is done, so a crash
redelivers what was unfinished and never skips it. Pure state, no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

__all__ = ["OffsetTracker"]


class _Partition:
    __slots__ = ("committed", "done", "order", "outstanding")

    def __init__(self) -> None:
        self.order: deque[int] = deque()
        self.outstanding: set[int] = set()
        self.done: set[int] = set()
        self.committed: int | None = None


class OffsetTracker:
    """Per partition: offsets handed out (in order) and which of them are done."""

    def __init__(self) -> None:
        self._partitions: dict[int, _Partition] = {}

    def started(self, partition: int, offsets: Sequence[int]) -> None:
        """Record fetched offsets, increasing, after any this partition had."""
        if not offsets:
            return
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _Partition()
        if state.order and offsets[0] <= state.order[-1]:
            raise ValueError(
                f"partition {partition}: offset {offsets[0]} arrived after {state.order[-1]}"
            )
        state.order.extend(offsets)
        state.outstanding.update(offsets)

    def finished(self, partition: int, offsets: Iterable[int]) -> None:
        """Mark offsets done (acked, retried elsewhere or dead-lettered).

        An offset that was never started (or whose partition was forgotten)
        is ignored: it must not count as done if it is fetched again later.
        """
        state = self._partitions.get(partition)
        if state is not None:
            state.done.update(state.outstanding.intersection(offsets))

    def committable(self) -> dict[int, int]:
        """Per partition with progress: the next offset to commit (last contiguous done + 1).

        Returns only partitions that advanced since the previous call.
        """
        advanced: dict[int, int] = {}
        for partition, state in self._partitions.items():
            order, done = state.order, state.done
            last = None
            while order and order[0] in done:
                last = order.popleft()
                done.discard(last)
                state.outstanding.discard(last)
            if last is not None:
                state.committed = last + 1
                advanced[partition] = last + 1
        return advanced

    def pending(self, partition: int) -> int:
        """Offsets of ``partition`` handed out and not yet committable."""
        state = self._partitions.get(partition)
        return len(state.order) if state is not None else 0

    def forget(self, partition: int) -> None:
        """Drop a partition's state (it was revoked)."""
        self._partitions.pop(partition, None)
