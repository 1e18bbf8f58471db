"""The scale-out bench's reading of its members' logs: what it reports as key order kept."""

from __future__ import annotations

from pathlib import Path

from bench.scaling_logs import Handled, Progress, handled, key_order


def test_key_order_counts_swaps_and_overlaps_across_processes_only_once_per_message() -> None:
    records = [
        # key a: in order, one after the other (in two processes)
        Handled("a", 0, 1.0, 2.0),
        Handled("a", 3, 2.0, 3.0),
        Handled("a", 6, 3.5, 4.0),
        # key b: 4 ran while 1 still ran (another process): overlap
        Handled("b", 1, 1.0, 3.0),
        Handled("b", 4, 2.5, 3.5),
        # key c: 5 ran before 2: swapped; 2 redelivered later counts by its first run
        Handled("c", 5, 1.0, 1.5),
        Handled("c", 2, 2.0, 2.5),
        Handled("c", 2, 9.0, 9.5),
    ]
    order = key_order(records)
    assert (order.pairs, order.broken) == (4, 2)


def test_progress_counts_distinct_whole_lines_as_the_logs_grow(tmp_path: Path) -> None:
    first, second = tmp_path / "m0.log", tmp_path / "m1.log"
    first.write_text("k00 0 1.0 1.1\nk01 1 1.1 1.2\nk0")
    progress = Progress([first, second])
    assert progress.count() == 2  # the torn line is not one yet
    with first.open("a") as log:
        log.write("0 2 1.2 1.3\n")
    second.write_text("k01 1 5.0 5.1\ncpu 0.250\n")  # 1 again: redelivered
    assert progress.count() == 3
    assert [r.seq for r in handled(first)] == [0, 1, 2]
