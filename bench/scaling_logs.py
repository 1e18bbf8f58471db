"""Reading what the members of a scale-out run logged: throughput, shares and key order.

Each member (``bench/scaling_member.py``) appends ``key sequence started
ended`` per handled message and ``cpu <seconds>`` when it stops; only whole
lines count.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Handled", "KeyOrder", "Progress", "handled", "key_order", "member_cpu"]


@dataclass(frozen=True, slots=True)
class Handled:
    """One handled message: its key, its sequence number in the backlog, when it ran."""

    key: str
    seq: int
    started: float
    ended: float


def _lines(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    text = log.read_text()
    whole = text[: text.rfind("\n") + 1]  # a line still being written is not one yet
    return [line.split() for line in whole.splitlines()]


def handled(log: Path) -> list[Handled]:
    """Every message the member logged, in the order it logged them."""
    return [Handled(f[0], int(f[1]), float(f[2]), float(f[3])) for f in _lines(log) if len(f) == 4]


def member_cpu(log: Path) -> float | None:
    """CPU seconds the member spent from its start signal to its stop, if it logged them."""
    found = [float(f[1]) for f in _lines(log) if len(f) == 2 and f[0] == "cpu"]
    return found[-1] if found else None


class Progress:
    """The distinct messages handled so far in ``logs``, read as they grow.

    Each look reads only what was appended since the last, so watching costs
    the members next to nothing.
    """

    def __init__(self, logs: list[Path]) -> None:
        self._offsets = dict.fromkeys(logs, 0)
        self._seen: set[int] = set()

    def count(self) -> int:
        for log, offset in self._offsets.items():
            if not log.exists():
                continue
            with log.open("rb") as file:
                file.seek(offset)
                chunk = file.read()
            whole = chunk[: chunk.rfind(b"\n") + 1]
            self._offsets[log] = offset + len(whole)
            for line in whole.splitlines():
                fields = line.split()
                if len(fields) == 4:
                    self._seen.add(int(fields[1]))
        return len(self._seen)


@dataclass(frozen=True)
class KeyOrder:
    """Per key, consecutive messages (by sequence) and how many of them overlapped or swapped.

    A pair is broken when the later message started before the earlier one
    ended, in whichever processes they ran: handled out of order, or both at
    once.
    """

    pairs: int
    broken: int


def key_order(records: list[Handled]) -> KeyOrder:
    """Check per-key order over the merged logs of every member (first handling of each)."""
    first: dict[int, Handled] = {}
    for record in records:
        if record.seq not in first or record.started < first[record.seq].started:
            first[record.seq] = record
    by_key: dict[str, list[Handled]] = defaultdict(list)
    for record in first.values():
        by_key[record.key].append(record)
    pairs = broken = 0
    for runs in by_key.values():
        runs.sort(key=lambda r: r.seq)
        for earlier, later in itertools.pairwise(runs):
            pairs += 1
            broken += later.started < earlier.ended
    return KeyOrder(pairs, broken)
