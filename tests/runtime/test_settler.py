"""The settler alone: when it flushes, what one round trip carries, and what a failure keeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from millstream.errors import BrokerUnavailable
from millstream.runtime.settler import Settled, Settler
from millstream.runtime.tasks import cancel_and_wait
from tests.runtime.fakes import FakeSubscription, message

NEVER = 3600.0  # an interval no test waits for


class Reports:
    def __init__(self) -> None:
        self.batches: list[tuple[Settled, bool]] = []

    def __call__(self, batch: Settled, ok: bool) -> None:
        self.batches.append((batch, ok))


@pytest.fixture
def subscription() -> FakeSubscription:
    return FakeSubscription()


@pytest.fixture
def reports() -> Reports:
    return Reports()


@pytest.fixture
async def tasks() -> AsyncIterator[list[asyncio.Task[None]]]:
    """Tasks to cancel and wait for when the test ends."""
    started: list[asyncio.Task[None]] = []
    yield started
    await cancel_and_wait(*started)


async def turns(count: int = 10) -> None:
    """Let every ready task run a few times."""
    for _ in range(count):
        await asyncio.sleep(0)


async def settled(subscription: FakeSubscription) -> None:
    await asyncio.wait_for(subscription.settled.wait(), 5.0)
    subscription.settled.clear()


async def test_a_full_batch_is_flushed_at_once_in_one_round_trip(
    subscription: FakeSubscription, reports: Reports, tasks: list[asyncio.Task[None]]
) -> None:
    settler = Settler(subscription, batch=3, interval=NEVER, on_settled=reports)
    task = asyncio.create_task(settler.run())
    tasks.append(task)
    settler.ack(message("a"))
    settler.requeue(message("r"), 2.5)
    await turns()
    assert subscription.settles == 0  # two of three: it waits for the interval
    settler.dead(message("d"), "FatalError: no such order")
    await settled(subscription)
    assert subscription.settles == 1
    assert subscription.acked_ids() == ["a"]
    assert [(m.id, delay) for m, delay in subscription.requeues] == [("r", 2.5)]
    assert [(m.id, reason) for m, reason in subscription.deads] == [
        ("d", "FatalError: no such order")
    ]
    [(batch, ok)] = reports.batches
    assert ok and batch.size == 3
    assert [m.id for m in batch.acks] == ["a"] and [m.id for m, _ in batch.deads] == ["d"]


async def test_fewer_than_a_batch_are_flushed_after_the_interval(
    subscription: FakeSubscription, reports: Reports, tasks: list[asyncio.Task[None]]
) -> None:
    settler = Settler(subscription, batch=100, interval=0.01, on_settled=reports)
    task = asyncio.create_task(settler.run())
    tasks.append(task)
    settler.ack(message("a"))
    await settled(subscription)
    settler.ack(message("b"))
    await settled(subscription)
    assert subscription.acked_ids() == ["a", "b"]
    assert subscription.settles == 2


async def test_flush_now_sends_what_is_collected_without_waiting(
    subscription: FakeSubscription, reports: Reports, tasks: list[asyncio.Task[None]]
) -> None:
    settler = Settler(subscription, batch=100, interval=NEVER, on_settled=reports)
    task = asyncio.create_task(settler.run())
    tasks.append(task)
    settler.flush_now()  # nothing collected: nothing to send
    await turns()
    settler.ack(message("a"))
    await turns()
    assert subscription.settles == 0
    settler.flush_now()
    await settled(subscription)
    assert subscription.acked_ids() == ["a"]


async def test_batches_never_overlap(
    subscription: FakeSubscription, reports: Reports, tasks: list[asyncio.Task[None]]
) -> None:
    subscription.settle_gate = asyncio.Event()
    settler = Settler(subscription, batch=1, interval=NEVER, on_settled=reports)
    task = asyncio.create_task(settler.run())
    tasks.append(task)
    settler.ack(message("a"))
    await turns()
    settler.ack(message("b"))  # a full batch again, while the first is on its way
    settler.ack(message("c"))
    await turns()
    assert subscription.settling == 1
    subscription.settle_gate.set()
    await asyncio.wait_for(_until_acked(subscription, 3), 5.0)
    assert subscription.most_settling == 1
    assert subscription.acked_ids() == ["a", "b", "c"]
    assert subscription.settles == 2  # what came meanwhile went together


async def _until_acked(subscription: FakeSubscription, count: int) -> None:
    while len(subscription.acks) < count:
        await settled(subscription)


async def test_close_flushes_what_is_collected_and_ends_run(
    subscription: FakeSubscription, reports: Reports, tasks: list[asyncio.Task[None]]
) -> None:
    settler = Settler(subscription, batch=100, interval=NEVER, on_settled=reports)
    task = asyncio.create_task(settler.run())
    tasks.append(task)
    settler.ack(message("a"))
    settler.requeue(message("r"), 1.0)
    await turns()
    settler.close()
    await asyncio.wait_for(task, 5.0)
    assert subscription.acked_ids() == ["a"]
    assert [m.id for m, _ in subscription.requeues] == ["r"]


async def test_close_with_nothing_collected_ends_run_without_a_round_trip(
    subscription: FakeSubscription, reports: Reports, tasks: list[asyncio.Task[None]]
) -> None:
    settler = Settler(subscription, batch=100, interval=NEVER, on_settled=reports)
    task = asyncio.create_task(settler.run())
    tasks.append(task)
    await turns()
    settler.close()
    await asyncio.wait_for(task, 5.0)
    assert subscription.settles == 0 and reports.batches == []


async def test_a_failed_flush_ends_run_and_later_outcomes_are_kept_for_the_caller(
    subscription: FakeSubscription, reports: Reports, tasks: list[asyncio.Task[None]]
) -> None:
    subscription.fail_settle(BrokerUnavailable("connection reset"))
    settler = Settler(subscription, batch=2, interval=NEVER, on_settled=reports)
    task = asyncio.create_task(settler.run())
    tasks.append(task)
    settler.ack(message("a"))
    settler.dead(message("d"), "FatalError: bad")
    with pytest.raises(BrokerUnavailable, match="connection reset"):
        await asyncio.wait_for(task, 5.0)
    [(batch, ok)] = reports.batches
    assert not ok and batch.size == 2  # reported, so the caller can remember them
    assert [m.id for m in batch.acks] == ["a"]
    assert [(m.id, reason) for m, reason in batch.deads] == [("d", "FatalError: bad")]
    settler.ack(message("late"))  # handlers go on finishing after the flush failed
    settler.requeue(message("again"), 1.0)
    settler.close()
    pending = settler.take_pending()
    assert pending.size == 2
    assert [m.id for m in pending.acks] == ["late"]
    assert settler.take_pending().size == 0  # taken once
