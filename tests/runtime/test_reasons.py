"""``reason_of``: the kind of failure a dead letter's error names, from the texts the runtime
writes."""

from __future__ import annotations

import pytest

from millstream import FatalError, RetryPolicy
from millstream.retry import Dead
from millstream.runtime.reasons import REASON_LENGTH, reason_of


class IllegalTransition(FatalError):
    pass


def dead_reason(policy: RetryPolicy, exc: Exception, attempt: int) -> str:
    outcome = policy.classify(exc, attempt)
    assert isinstance(outcome, Dead)
    return outcome.reason


def test_letters_that_failed_the_same_way_share_a_reason_whatever_their_details() -> None:
    policy = RetryPolicy(attempts=3)
    fatal = {dead_reason(policy, IllegalTransition(f"order o-{n}: can't ship"), 1) for n in (1, 2)}
    assert {reason_of(text) for text in fatal} == {"IllegalTransition"}
    exhausted = [dead_reason(policy, LookupError(f"no order o-{n}"), 3) for n in (1, 2)]
    assert exhausted[0] != exhausted[1]
    assert {reason_of(text) for text in exhausted} == {"attempts exhausted: LookupError"}
    assert reason_of(dead_reason(policy, TimeoutError(), 3)) == "attempts exhausted: TimeoutError"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("DecodeError: payload does not validate as Payment: 1 error", "DecodeError"),
        ("key function failed: KeyError: 'order_id'", "key function failed: KeyError"),
        (
            "retry policy failed (TypeError('bad (x)')) on ValueError: boom",
            "retry policy failed: ValueError",
        ),
        (
            "delivered 6 times without an outcome; the process handling it may have crashed",
            "delivered too often without an outcome",
        ),
        ("myapp.errors.Rejected: no", "myapp.errors.Rejected"),
        ("the warehouse said no", "the warehouse said no"),
        ("first line\nsecond line", "first line"),
        ("", "(no reason given)"),
    ],
)
def test_reasons_of_each_kind_of_text(error: str, reason: str) -> None:
    assert reason_of(error) == reason


def test_a_long_free_text_reason_is_cut() -> None:
    assert reason_of("why " * 200) == ("why " * 200)[:REASON_LENGTH]
