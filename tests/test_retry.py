from __future__ import annotations

import pytest

from millstream import ConfigError, DecodeError, FatalError, RetryableError, RetryPolicy
from millstream.retry import Dead, Requeue


def test_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(attempts=10, backoff=0.5, max_backoff=3.0, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_spreads_within_its_fraction() -> None:
    policy = RetryPolicy(backoff=1.0, jitter=0.2)
    delays = {policy.delay(1) for _ in range(200)}
    assert len(delays) > 100
    assert all(0.8 <= d <= 1.2 for d in delays)


def test_unknown_and_retryable_errors_retry_until_attempts_run_out() -> None:
    policy = RetryPolicy(attempts=3, backoff=0.1, jitter=0)
    assert policy.classify(RuntimeError("x"), 1) == Requeue(0.1)
    assert policy.classify(RetryableError("x"), 2) == Requeue(0.2)
    outcome = policy.classify(RuntimeError("boom"), 3)
    assert outcome == Dead("attempts exhausted (3 of 3): RuntimeError: boom")


def test_fatal_and_undecodable_go_straight_to_dead_letters() -> None:
    policy = RetryPolicy(attempts=5)
    assert policy.classify(FatalError("no such order"), 1) == Dead("FatalError: no such order")
    assert isinstance(policy.classify(DecodeError("bad json"), 1), Dead)


def test_retry_on_and_dead_on_add_exception_types() -> None:
    class Flaky(FatalError):
        pass

    policy = RetryPolicy(attempts=5, jitter=0).with_errors(retry_on=[Flaky], dead_on=[KeyError])
    assert isinstance(policy.classify(Flaky("x"), 1), Requeue)
    assert policy.classify(KeyError("order"), 1) == Dead("KeyError: 'order'")


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"attempts": 0}, "attempts=0"), ({"backoff": -1}, "backoff=-1"), ({"jitter": 2}, "jitter=2")],
)
def test_invalid_policy_names_the_setting(kwargs: dict[str, float], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_backoff_stays_capped_for_any_attempt_and_with_jitter() -> None:
    policy = RetryPolicy(attempts=10**9, backoff=0.5, max_backoff=30.0, jitter=0.5)
    assert all(0 <= policy.delay(n) <= 30.0 for n in (1, 10, 1025, 10**6))
    assert isinstance(policy.classify(RuntimeError("x"), 5000), Requeue)
