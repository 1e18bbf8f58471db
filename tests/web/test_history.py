"""``ThroughputHistory`` without a server: buckets, the window, and a consumer made anew."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from millstream.runtime.stats import ConsumerStats
from millstream.web.history import Counts, ThroughputHistory


def consumer(**counts: int) -> Any:
    return SimpleNamespace(stats=ConsumerStats(**counts))


def test_each_bucket_holds_what_happened_since_the_one_before() -> None:
    history = ThroughputHistory(bucket=5.0, window=15.0)
    payments = consumer(consumed=100, acked=90)
    history.reset({"payments": payments})  # what came before serving is no bucket's
    payments.stats.consumed, payments.stats.acked, payments.stats.dead = 110, 97, 2
    assert history.sample({"payments": payments}, at=5.0).counts == {
        "payments": Counts(10, 7, 0, 2)
    }
    assert history.sample({"payments": payments}, at=10.0).counts == {
        "payments": Counts(0, 0, 0, 0)
    }

    late = consumer(consumed=3, acked=3)  # not there at reset: counts from zero
    payments.stats.retried = 4
    sample = history.sample({"payments": payments, "late": late}, at=15.0)
    assert sample.counts == {"payments": Counts(0, 0, 4, 0), "late": Counts(3, 3, 0, 0)}
    history.sample({"payments": payments, "late": late}, at=20.0)
    assert [s.at for s in history.samples] == [10.0, 15.0, 20.0]  # 15 s of 5 s buckets


def test_a_consumer_made_anew_counts_from_zero() -> None:
    history = ThroughputHistory(bucket=1.0, window=10.0)
    history.reset({"payments": consumer(consumed=50)})
    restarted = consumer(consumed=4)  # the app restarted: new stats, lower counters
    assert history.sample({"payments": restarted}, at=1.0).counts["payments"].consumed == 4


def test_a_window_shorter_than_a_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match=r"bucket=5\.0 must be positive and window=1\.0"):
        ThroughputHistory(bucket=5.0, window=1.0)
