"""The scale-out chart: throughput against member processes, one line per broker."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # a file, no display

import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from bench.scaling_results import Cell, Workload

__all__ = ["draw"]


def draw(found: Sequence[Cell], path: Path, workload: Workload, *, cores: int) -> None:
    """Write a PNG of the best run of each cell to ``path``, the range of its runs as an error
    bar, with the CPU ceiling of ``cores`` cores."""
    brokers = list(dict.fromkeys(cell.broker for cell in found))
    counts = sorted({cell.processes for cell in found})
    figure, axes = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    axes.plot(
        counts,
        [min(n, cores) / workload.burn for n in counts],
        linestyle=":",
        color="grey",
        label=f"CPU ceiling ({cores} cores)",
    )
    for n, broker in enumerate(brokers):
        mine = sorted((c for c in found if c.broker == broker), key=lambda c: c.processes)
        shift = (n - (len(brokers) - 1) / 2) * 0.04  # side by side, so every bar shows
        best = [c.best.throughput for c in mine]
        below = [b - c.low for b, c in zip(best, mine, strict=True)]
        axes.errorbar(
            [c.processes + shift for c in mine],
            best,
            yerr=[below, [0.0] * len(mine)],
            marker="o",
            capsize=3,
            label=broker,
        )
    axes.set_title(
        f"One group, {workload.backlog:,} messages ({workload.keys} keys) "
        f"of {workload.burn * 1000:g} ms CPU each, {cores} cores"
    )
    axes.set_xlabel("member processes")
    axes.set_ylabel("messages / s (best; bar: down to the slowest run)")
    axes.set_xticks(counts)
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
