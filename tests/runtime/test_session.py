"""One session over a fake subscription: what it fetches, what it settles, how it ends."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from millstream.errors import BrokerUnavailable, FatalError
from millstream.message import Message
from millstream.retry import RetryPolicy
from millstream.runtime.attempts import ACKED, UncountedDeliveries
from millstream.runtime.handler import Invoke
from millstream.runtime.session import Limits, Session
from millstream.runtime.stats import ConsumerStats
from millstream.runtime.tasks import cancel_and_wait
from tests.runtime.fakes import FakeSubscription, Gated, message
from tests.support import until

NEVER = 3600.0
LIMITS = Limits(
    concurrency=2,
    max_inflight=8,
    prefetch=4,
    poll_timeout=0.05,
    settle_batch=1,
    settle_interval=NEVER,
    drain_timeout=10.0,
)
POLICY = RetryPolicy(attempts=3, backoff=0.25, jitter=0)


def publish_key(message: Message) -> str | None:
    return message.key


class Running:
    """A session made over ``subscription`` and running until ``stop``."""

    def __init__(
        self,
        subscription: FakeSubscription,
        invoke: Invoke,
        *,
        key_of: Callable[[Message], str | None] = publish_key,
        resumed: asyncio.Event | None = None,
        uncounted: UncountedDeliveries | None = None,
        **limits: Any,
    ) -> None:
        if resumed is None:
            resumed = asyncio.Event()
            resumed.set()
        self.stats = ConsumerStats()
        self.uncounted = uncounted if uncounted is not None else UncountedDeliveries(most=100)
        self.session = Session(
            subscription,
            name="test",
            invoke=invoke,
            key_of=key_of,
            retry=POLICY,
            limits=dataclasses.replace(LIMITS, **limits),
            stats=self.stats,
            uncounted=self.uncounted,
            resumed=resumed,
        )
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self.session.run(self.stopping))

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(self.task, 5.0)


@pytest.fixture
def subscription() -> FakeSubscription:
    return FakeSubscription()


@pytest.fixture
async def start(subscription: FakeSubscription) -> AsyncIterator[Callable[..., Running]]:
    """Start a session over the test's subscription; cancelled at the end if still running."""
    sessions: list[Running] = []

    def starting(invoke: Invoke, **options: Any) -> Running:
        sessions.append(Running(subscription, invoke, **options))
        return sessions[-1]

    yield starting
    await cancel_and_wait(*(running.task for running in sessions))


def failing(exc: BaseException) -> Invoke:
    async def handler(message: Message) -> None:
        raise exc

    return handler


def redelivery(uncounted: UncountedDeliveries, id: str, attempt: int) -> Message:
    """The next delivery of ``id`` as a broker would count it, after the ledger's correction."""
    again = message(id, attempt=attempt)
    uncounted.correct([again])
    return again


async def test_it_never_holds_more_than_max_inflight(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    handler = Gated()
    subscription.offer(*(message(f"m{n}") for n in range(20)))
    running = start(handler, max_inflight=4, prefetch=10)
    await until(lambda: running.session.inflight == 4 and len(handler.running) == 2)
    await asyncio.wait_for(subscription.kept_alive(), 5.0)  # full: only keeps leases alive
    assert subscription.most_held == 4 and all(asked <= 4 for asked in subscription.asked)
    handler.release_all()
    await until(lambda: len(subscription.acks) == 20)
    assert subscription.most_held == 4
    assert running.session.inflight == 0
    assert running.stats.consumed == 20 and running.stats.acked == 20


async def test_a_message_is_acked_only_once_its_handler_finished(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    handler = Gated()
    subscription.offer(message("slow"), message("fast"))
    start(handler)
    await until(lambda: handler.started == ["slow", "fast"])
    handler.release("fast")
    await until(lambda: subscription.acked_ids() == ["fast"])
    fetches = len(subscription.asked)
    await until(lambda: len(subscription.asked) > fetches + 1)  # the settler had its chances
    assert subscription.acked_ids() == ["fast"]
    handler.release("slow")
    await until(lambda: subscription.acked_ids() == ["fast", "slow"])


async def test_a_failure_is_requeued_with_the_policys_delay(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    subscription.offer(message("first", attempt=1), message("second", attempt=2))
    running = start(failing(RuntimeError("boom")))
    await until(lambda: len(subscription.requeues) == 2)
    delays = sorted((m.id, delay) for m, delay in subscription.requeues)
    assert delays == [("first", 0.25), ("second", 0.5)]
    assert subscription.acks == [] and subscription.deads == []
    assert running.stats.retried == 2


async def test_the_last_attempt_and_a_fatal_error_are_dead_lettered_with_the_reason(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    async def handler(message: Message) -> None:
        raise FatalError("no such order") if message.id == "fatal" else RuntimeError("boom")

    subscription.offer(message("last", attempt=3), message("fatal", attempt=1))
    running = start(handler)
    await until(lambda: len(subscription.deads) == 2)
    assert sorted((m.id, reason) for m, reason in subscription.deads) == [
        ("fatal", "FatalError: no such order"),
        ("last", "attempts exhausted (3 of 3): RuntimeError: boom"),
    ]
    assert subscription.requeues == [] and running.stats.dead == 2


async def test_a_delivery_past_the_attempts_is_dead_lettered_without_running(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    handler = Gated()
    handler.release_all()
    subscription.offer(message("crashes", attempt=4), message("fine"))
    start(handler)
    await until(lambda: len(subscription.deads) == 1 and len(subscription.acks) == 1)
    [(dead, reason)] = subscription.deads
    assert dead.id == "crashes" and reason.startswith("delivered 4 times without an outcome")
    assert handler.started == ["fine"]


async def test_a_key_function_that_fails_dead_letters_its_message(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    def key_of(message: Message) -> str | None:
        if message.id == "odd":
            raise KeyError("order_id")
        return message.key

    handler = Gated()
    handler.release_all()
    subscription.offer(message("odd"), message("fine"))
    start(handler, key_of=key_of)
    await until(lambda: len(subscription.deads) == 1 and len(subscription.acks) == 1)
    assert [(m.id, r) for m, r in subscription.deads] == [
        ("odd", "key function failed: KeyError: 'order_id'")
    ]


async def test_an_outcome_a_lost_connection_swallowed_is_applied_again_without_running(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    uncounted = UncountedDeliveries(most=10)
    uncounted.remember([message("handled")], ACKED)
    uncounted.remember([message("poison", attempt=2)], "FatalError: bad")
    handler = Gated()
    handler.release_all()
    subscription.offer(message("handled", attempt=2), message("poison", attempt=3))
    running = start(handler, uncounted=uncounted)
    await until(lambda: len(subscription.acks) == 1 and len(subscription.deads) == 1)
    assert subscription.acked_ids() == ["handled"]
    assert [(m.id, r) for m, r in subscription.deads] == [("poison", "FatalError: bad")]
    assert handler.started == []
    assert not uncounted  # settled for good: forgotten
    assert running.session.inflight == 0


async def test_stop_waits_for_running_handlers_then_flushes_then_closes(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    handler = Gated()
    subscription.offer(message("a"))
    running = start(handler, settle_batch=100)  # outcomes wait for the stop's flush
    await until(lambda: handler.started == ["a"])
    running.stopping.set()
    await asyncio.wait_for(subscription.kept_alive(), 5.0)  # draining keeps leases alive
    assert not running.task.done()
    handler.release("a")
    await running.stop()
    assert subscription.acked_ids() == ["a"]
    assert subscription.events == ["settle", "close"]
    assert handler.cancelled == []


async def test_stop_cancels_handlers_past_drain_timeout_and_releases_the_unstarted(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    handler = Gated()
    handler.release("done")
    subscription.offer(message("done"), message("stuck", "k"), message("behind", "k"))
    running = start(handler, concurrency=1, settle_batch=100, drain_timeout=0.05)
    await until(lambda: handler.started == ["done", "stuck"])
    await until(lambda: not subscription.waiting)  # "behind" fetched too, waiting on its key
    await running.stop()
    assert handler.cancelled == ["stuck"]
    assert subscription.acked_ids() == ["done"]
    assert subscription.events == ["settle", "close"]
    # The unstarted message's next delivery is no attempt; the cancelled one's is.
    assert redelivery(running.uncounted, "behind", attempt=2).attempt == 1
    assert redelivery(running.uncounted, "stuck", attempt=2).attempt == 2


async def test_a_broker_error_from_fetch_ends_it_without_acking_unfinished_work(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    handler = Gated()
    subscription.offer(message("stuck"))
    running = start(handler, drain_timeout=0.05)
    await until(lambda: handler.started == ["stuck"])
    subscription.fail_fetch(BrokerUnavailable("connection reset"))
    with pytest.raises(BrokerUnavailable, match="connection reset"):
        await asyncio.wait_for(running.task, 5.0)
    assert handler.cancelled == ["stuck"]
    assert subscription.acks == [] and subscription.closed.is_set()


async def test_outcomes_after_a_failed_settle_are_remembered_not_lost(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    handler = Gated()
    handler.release("first")
    subscription.fail_settle(BrokerUnavailable("connection reset"))
    subscription.offer(message("first"), message("late"))
    running = start(handler)
    await until(lambda: running.session.inflight == 1)  # the failed batch is counted out
    handler.release("late")  # finishes while the session drains
    with pytest.raises(BrokerUnavailable, match="connection reset"):
        await asyncio.wait_for(running.task, 5.0)
    assert subscription.acks == [] and running.session.inflight == 0
    # Both were handled: their redeliveries are acked again, not handled again.
    decided = running.uncounted.correct([message("first", attempt=2), message("late", attempt=2)])
    assert [(m.id, outcome) for m, outcome in decided] == [("first", ACKED), ("late", ACKED)]


async def test_it_fetches_nothing_while_paused(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    resumed = asyncio.Event()
    handler = Gated()
    handler.release_all()
    subscription.offer(message("a"))
    start(handler, resumed=resumed)
    await asyncio.wait_for(subscription.kept_alive(), 5.0)
    assert subscription.asked == [] and handler.started == []
    resumed.set()
    await until(lambda: subscription.acked_ids() == ["a"])


async def test_set_concurrency_runs_more_handlers_and_holds_more(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    handler = Gated()
    subscription.offer(*(message(f"m{n}") for n in range(10)))
    running = start(handler, concurrency=1, max_inflight=2, prefetch=2)
    await until(lambda: running.session.inflight == 2 and len(handler.running) == 1)
    running.session.set_concurrency(3, 6)
    await until(lambda: running.session.inflight == 6 and len(handler.running) == 3)
    handler.release_all()
    await until(lambda: len(subscription.acks) == 10)
    assert subscription.most_held == 6


async def test_lag_and_takeovers_are_the_subscriptions(
    subscription: FakeSubscription, start: Callable[..., Running]
) -> None:
    resumed = asyncio.Event()  # paused: the offered messages stay waiting
    subscription.offer(message("a"), message("b"))
    subscription.taken_over = 3
    running = start(Gated(), resumed=resumed)
    lag = await running.session.lag()
    assert lag is not None and lag.total == 2
    assert running.session.taken_over == 3
    assert not running.session.proved_itself(NEVER)
    assert running.session.proved_itself(-1.0)
