"""Where the CPU went while the members of a run consumed: the broker's server, and the rest.

The members' own CPU is what the rows measure. The broker's server (found by
the port it listens on) costs CPU of its own, per message; anything else
running at the time (other programs on a shared machine) takes cores from
both. ``/proc/stat`` gives the whole machine's busy time and
``/proc/<pid>/stat`` each process's, so what neither the members nor the
server used over the run is the rest of the machine, in cores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CpuWatch", "Spent", "listening"]


def _machine() -> tuple[int, int]:
    """(busy, total) clock ticks of every core together."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def _ticks(pids: Sequence[int]) -> int:
    """User plus system clock ticks of ``pids`` (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


def listening(port: int) -> list[int]:
    """The processes listening on TCP ``port`` of this machine; empty when they cannot be
    seen (another network namespace, or no permission to read their sockets)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                lines = rows.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pids = []
    for entry in os.listdir("/proc") if inodes else ():
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") in inodes for fd in fds):
                pids.append(int(entry))
        except OSError:
            continue
    return pids


@dataclass(frozen=True)
class Spent:
    """Cores kept busy on average over a run, by whom."""

    server: float
    """The broker's server (0 where it has none, or it could not be seen)."""
    others: float
    """Everything but the members and the server."""


class CpuWatch:
    """Started when the first message is handled, read when the last is."""

    def __init__(self, members: Sequence[int], server: Sequence[int]) -> None:
        self._members, self._server = list(members), list(server)
        self._start = (_machine(), _ticks(self._members), _ticks(self._server))

    def spent(self) -> Spent:
        (busy0, total0), members0, server0 = self._start
        busy, total = _machine()
        elapsed = (total - total0) / (os.cpu_count() or 1)  # ticks of one core
        if elapsed <= 0:
            return Spent(0.0, 0.0)
        server = _ticks(self._server) - server0
        rest = busy - busy0 - (_ticks(self._members) - members0) - server
        return Spent(server / elapsed, max(rest, 0) / elapsed)
