"""What the scale-out rows measured: runs, cells (every run of one broker and process count),
and the table ``make bench`` prints."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from bench.scaling_cpu import Spent
from bench.scaling_logs import Handled, KeyOrder, key_order

TARGET = 1.7
"""Two processes against one, at least, on every broker."""

__all__ = ["TARGET", "Cell", "Run", "Workload", "cells", "table"]


@dataclass(frozen=True)
class Workload:
    """What every run of the rows consumes, and how."""

    backlog: int = 3000
    """Messages published before the members start."""
    keys: int = 256
    """Publish keys, given in turn: ``k000``, ``k001``, ..."""
    concurrency: int = 1
    """Handlers of one member at once (CPU-bound handlers gain nothing from more)."""
    burn: float = 0.001
    """Seconds of CPU each handler burns."""


@dataclass(frozen=True)
class Run:
    """One broker consumed by ``processes`` members: what they did, and how fast."""

    broker: str
    processes: int
    workload: Workload
    records: list[Handled]
    shares: list[int]
    cpu: float | None
    """CPU seconds of every member together, from their start to their stop."""
    spent: Spent
    """The CPU the broker's server and the rest of the machine spent while the members
    consumed."""
    key_order_promised: bool

    @property
    def distinct(self) -> int:
        return len({r.seq for r in self.records})

    @property
    def duplicates(self) -> int:
        return len(self.records) - self.distinct

    @property
    def seconds(self) -> float:
        if not self.records:
            return float("nan")
        return max(r.ended for r in self.records) - min(r.started for r in self.records)

    @property
    def throughput(self) -> float:
        return self.distinct / self.seconds if self.records else 0.0

    @property
    def order(self) -> KeyOrder:
        return key_order(self.records)

    @property
    def server_per_message(self) -> float:
        """CPU seconds of the broker's server per message handled."""
        return self.spent.server * self.seconds / self.distinct if self.records else 0.0

    def figures(self) -> dict[str, Any]:
        """The run as plain numbers (``--json``)."""
        order = self.order
        cpu = None if self.cpu is None else round(self.cpu / self.distinct * 1e3, 3)
        return {
            "broker": self.broker,
            "processes": self.processes,
            "msgs_s": round(self.throughput, 1),
            "shares": self.shares,
            "cpu_ms_per_msg": cpu,
            "server_ms_per_msg": round(self.server_per_message * 1e3, 3),
            "other_cores": round(self.spent.others, 2),
            "key_order_promised": self.key_order_promised,
            "key_pairs": order.pairs,
            "key_pairs_broken": order.broken,
            "duplicates": self.duplicates,
        }


@dataclass(frozen=True)
class Cell:
    """Every run of one broker with one process count."""

    broker: str
    processes: int
    runs: list[Run]

    @property
    def best(self) -> Run:
        return max(self.runs, key=lambda r: r.throughput)

    @property
    def low(self) -> float:
        return min(r.throughput for r in self.runs)

    @property
    def broken(self) -> int:
        return sum(r.order.broken for r in self.runs)


def cells(runs: list[Run]) -> list[Cell]:
    """The runs by broker and process count, in the order they first ran."""
    found: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        found.setdefault((run.broker, run.processes), []).append(run)
    return [Cell(broker, processes, mine) for (broker, processes), mine in found.items()]


COLUMNS = ("broker", "processes", "msgs/s", "range", "x one", "shares", "CPU", "server", "others")


def table(found: list[Cell], workload: Workload, repeat: int) -> Table:
    """Best of ``repeat`` runs per cell, the range over them, and key order over all of them."""
    cores = os.cpu_count() or 1
    result = Table(
        title=f"scale-out: {workload.backlog:,} messages ({workload.keys} keys), "
        f"{workload.burn * 1000:g} ms of CPU each, one group, members of concurrency "
        f"{workload.concurrency}, {cores} cores, best of {repeat}",
        caption=f"x one: best against the best of one process of the same broker; target for 2 "
        f"processes >= {TARGET}x. With {cores} cores, 4 processes share them and cannot beat 2: "
        f"the ceiling is {cores / workload.burn:,.0f} msgs/s. Shares: messages per process "
        "(best run). CPU: the members' own, ms per message; server: the broker's server's, ms "
        "per message; others: cores anything else kept busy meanwhile. Key order: "
        "consecutive messages of one key across processes, all runs; * not promised by the "
        "broker (Capabilities.key_order).",
    )
    for column in (*COLUMNS, "key order"):
        result.add_column(column, justify="left" if column in ("broker", "key order") else "right")
    one = {c.broker: c.best.throughput for c in found if c.processes == 1}
    for cell in found:
        best = cell.best
        ratio = best.throughput / one[cell.broker] if one.get(cell.broker) else float("nan")
        shown = f"{ratio:.2f}x"
        if cell.processes == 2:
            shown = f"[{'green' if ratio >= TARGET else 'red'}]{shown}[/]"
        result.add_row(
            cell.broker,
            str(cell.processes),
            f"{best.throughput:,.0f}",
            f"{cell.low:,.0f}-{best.throughput:,.0f}" if len(cell.runs) > 1 else "",
            shown,
            "/".join(str(s) for s in best.shares),
            f"{best.cpu / best.distinct * 1000:.2f}" if best.cpu is not None else "?",
            f"{best.server_per_message * 1000:.3f}" if best.spent.server else "-",
            f"{best.spent.others:.2f}",
            _order_cell(cell),
        )
    return result


def _order_cell(cell: Cell) -> str:
    """``kept`` or how many consecutive pairs of one key overlapped or swapped, over every run;
    ``*`` where the broker does not promise key order across members."""
    pairs = sum(r.order.pairs for r in cell.runs)
    shown = "kept" if cell.broken == 0 else f"{cell.broken}/{pairs} broken"
    twice = sum(r.duplicates for r in cell.runs)
    if twice:
        shown += f", {twice} twice"
    if not cell.runs[0].key_order_promised:
        return f"{shown} *"
    return f"[{'green' if cell.broken == 0 else 'red'}]{shown}[/]"
