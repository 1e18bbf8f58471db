"""``ConsumerStats``: one consumer's counters, kept by its sessions, read by metrics and health."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConsumerStats"]


@dataclass
class ConsumerStats:
    """Plain counters, cheap to bump on the hot path and read by metrics and health."""

    consumed: int = 0
    acked: int = 0
    retried: int = 0
    dead: int = 0
    reconnects: int = 0
    abandoned_threads: int = 0
    last_poll: float | None = None
    last_error: str | None = None
