"""``ConsumerStats``: one consumer's counters, kept by its sessions, read by metrics and health."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConsumerStats"]


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
