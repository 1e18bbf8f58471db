"""``Pace``: how many messages a member can start soon, so it fetches no more than that.

A member that takes a whole fetch of a burst while its handlers are slow
holds messages the other members of its group could be handling: 300
payments at once to three members went 257 / 42 / 1. So a session holds at
most what its workers can start within ``HORIZON``: one per worker, plus
what they get through in that time at the pace its handlers have kept
lately. Fast handlers are held back by nothing (that number is past any
fetch); slow ones fetch a little at a time and a burst spreads. Before
anything is measured it assumes slow: one message per worker, and one
ahead.
"""

from __future__ import annotations

import math

from millstream.runtime.stats import HandlerTimes

__all__ = ["HORIZON", "Pace"]

HORIZON = 0.05
"""Seconds of work a member fetches ahead of its workers, at most."""


class Pace:
    """Reads a consumer's handler times since the last look; cheap enough for every fetch."""

    __slots__ = ("_count", "_per_message", "_times", "_total")

    def __init__(self, times: HandlerTimes) -> None:
        self._times = times
        self._count = times.ok.count + times.error.count
        self._total = times.ok.total + times.error.total
        self._per_message: float | None = None

    def startable(self, workers: int) -> int:
        """Messages ``workers`` handlers can start within ``HORIZON`` at the recent pace."""
        ok, error = self._times.ok, self._times.error
        count = ok.count + error.count
        if count > self._count:
            total = ok.total + error.total
            window = (total - self._total) / (count - self._count)
            last = self._per_message
            self._per_message = window if last is None else (last + window) / 2
            self._count, self._total = count, total
        per_message = self._per_message
        if per_message is None:
            return 2 * workers
        return workers + math.ceil(workers * HORIZON / max(per_message, 1e-7))
