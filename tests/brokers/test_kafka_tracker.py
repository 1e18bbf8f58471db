from __future__ import annotations

import pytest

from millstream.brokers.kafka.tracker import OffsetTracker


def test_commits_only_the_contiguous_prefix_per_partition() -> None:
    tracker = OffsetTracker()
    tracker.started(0, [10, 11])
    tracker.started(0, [12, 13, 14])
    tracker.started(1, [7])

    tracker.finished(0, [11])
    tracker.finished(0, [12])
    assert tracker.committable() == {}

    tracker.finished(0, [10])
    tracker.finished(1, [7])
    assert tracker.committable() == {0: 13, 1: 8}
    assert tracker.committable() == {}
    assert tracker.pending(0) == 2

    tracker.finished(0, [14])
    tracker.finished(0, [13])
    assert tracker.committable() == {0: 15}


def test_rejects_offsets_that_go_backwards_and_forgets_revoked_partitions() -> None:
    tracker = OffsetTracker()
    tracker.started(3, [4, 5])
    with pytest.raises(ValueError, match="offset 5 arrived after 5"):
        tracker.started(3, [5, 6])
    tracker.forget(3)
    assert tracker.pending(3) == 0
    tracker.finished(3, [5])
    assert tracker.committable() == {}


def test_an_offset_finished_before_it_was_started_does_not_count() -> None:
    tracker = OffsetTracker()
    tracker.finished(0, [4])  # e.g. an outcome from before the partition was revoked
    tracker.started(0, [4])
    assert tracker.committable() == {}
    tracker.finished(0, [4])
    assert tracker.committable() == {0: 5}
