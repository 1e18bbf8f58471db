"""What a lost connection counted that was no attempt, taken back delivery by delivery."""

from __future__ import annotations

from millstream.message import Message
from millstream.runtime.attempts import ACKED, UncountedDeliveries


def delivery(attempt: int, id: str = "m-1") -> Message:
    return Message(id=id, topic="t", payload=b"", attempt=attempt)


def test_each_loss_takes_one_count_back_on_every_later_delivery() -> None:
    uncounted = UncountedDeliveries(most=10)
    uncounted.remember([delivery(1)])  # held unstarted when the connection went
    again = delivery(2)  # the broker counted the loss
    assert uncounted.correct([again]) == [] and again.attempt == 1
    uncounted.remember([again])  # lost again, still unstarted
    third = delivery(3)
    uncounted.correct([third])
    assert third.attempt == 1
    retried = delivery(4)  # then its handler failed once: a real attempt, counted on
    uncounted.correct([retried])
    assert retried.attempt == 2


def test_a_release_that_counted_nothing_takes_nothing_back() -> None:
    uncounted = UncountedDeliveries(most=10)
    uncounted.remember([delivery(3)])
    same = delivery(3)  # given back without counting (a clean close)
    uncounted.correct([same])
    assert same.attempt == 3 and not uncounted


def test_a_message_whose_outcome_was_lost_is_returned_with_it() -> None:
    uncounted = UncountedDeliveries(most=10)
    uncounted.remember([delivery(1, "done")], ACKED)
    uncounted.remember([delivery(3, "poison")], "FatalError: no such order")
    uncounted.remember([delivery(1, "waiting")])
    back = [delivery(2, "done"), delivery(4, "poison"), delivery(2, "waiting"), delivery(1, "new")]
    decided = uncounted.correct(back)
    assert [(m.id, outcome) for m, outcome in decided] == [
        ("done", ACKED),
        ("poison", "FatalError: no such order"),
    ]
    assert [m.attempt for m in back] == [1, 3, 1, 1]


def test_a_replay_starts_over_and_settled_messages_are_forgotten() -> None:
    uncounted = UncountedDeliveries(most=10)
    uncounted.remember([delivery(4, "replayed"), delivery(1, "acked")])
    replayed = delivery(1, "replayed")  # back from the dead letters at attempt 1
    uncounted.correct([replayed])
    assert replayed.attempt == 1
    uncounted.settled([delivery(2, "acked")])
    assert not uncounted


def test_it_keeps_at_most_the_newest_entries() -> None:
    uncounted = UncountedDeliveries(most=3)
    uncounted.remember([delivery(1, str(n)) for n in range(5)])
    oldest, newest = delivery(2, "0"), delivery(2, "4")
    uncounted.correct([oldest, newest])
    assert (oldest.attempt, newest.attempt) == (2, 1)
