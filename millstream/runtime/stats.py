"""``ConsumerStats``: one consumer's counters, kept by its sessions, read by metrics and health."""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Literal

from millstream.errors import text_of

__all__ = ["DURATION_BOUNDS", "ConsumerStats", "Durations", "Failure", "HandlerTimes"]

DURATION_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Upper bounds (seconds) of the handler-duration buckets; one more bucket holds the rest."""


class Durations:
    """A histogram of durations kept as plain numbers, so recording one costs a bisect.

    ``counts[i]`` is how many took at most ``DURATION_BOUNDS[i]`` seconds and
    more than the bound before; the last counts those above every bound.
    Readers (the metrics scrape) make them cumulative when they export.
    """

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BOUNDS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(DURATION_BOUNDS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)


class HandlerTimes:
    """How long a consumer's handler chain took, for messages it finished and those it failed."""

    __slots__ = ("error", "ok")

    def __init__(self) -> None:
        self.ok = Durations()
        self.error = Durations()


@dataclass(frozen=True, slots=True)
class Failure:
    """One error a consumer met: a handler's failure or what ended a session."""

    error_type: str
    """The exception's class name."""
    message: str
    """What the exception says (its class name when it says nothing)."""
    at: float
    """When (``time.time()``)."""
    source: Literal["handler", "session"]
    """``handler``: a message's handler raised; ``session``: the connection was lost or
    refused, or the session ended on an unexpected error."""

    @classmethod
    def of(cls, exc: BaseException, source: Literal["handler", "session"]) -> Failure:
        return cls(type(exc).__name__, text_of(exc), time.time(), source)


@dataclass
class ConsumerStats:
    """Plain counters, cheap to bump on the hot path and read by metrics and health."""

    consumed: int = 0
    """Messages fetched."""
    acked: int = 0
    """Messages whose handler finished."""
    retried: int = 0
    """Failures requeued for another attempt."""
    dead: int = 0
    """Messages sent to the dead letters."""
    reconnects: int = 0
    """Sessions that ended on an error and were started again."""
    abandoned_threads: int = 0
    """Sync handlers that timed out and whose threads run on."""
    last_poll: float | None = None
    """When the last fetch returned (``time.time()``)."""
    last_error: str | None = None
    """What ended the last session that failed."""
    last_failure: Failure | None = None
    """The latest error of either kind, handler failures included: one write per failure,
    none on success."""
    handler_times: HandlerTimes = field(default_factory=HandlerTimes)
    """Handler durations by outcome, timed by the dispatcher's workers."""
