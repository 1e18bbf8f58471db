"""The dispatcher alone: bounded concurrency, per-key order, resizing and draining."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from millstream.message import Message
from millstream.runtime.dispatcher import Dispatcher
from tests.runtime.fakes import Gated, message
from tests.support import until


class Outcomes:
    """Records what the dispatcher reports, in order."""

    def __init__(self) -> None:
        self.succeeded_ids: list[str] = []
        self.failures: list[tuple[str, BaseException]] = []
        self.unkeyable_ids: list[str] = []

    def succeeded(self, message: Message) -> None:
        self.succeeded_ids.append(message.id)

    def failed(self, message: Message, exc: BaseException) -> None:
        self.failures.append((message.id, exc))

    def unkeyable(self, message: Message, exc: Exception) -> None:
        self.unkeyable_ids.append(message.id)


def publish_key(message: Message) -> str | None:
    return message.key


async def test_one_key_runs_in_order_while_another_key_goes_past_it() -> None:
    handler, outcomes = Gated(), Outcomes()
    dispatcher = Dispatcher(handler, outcomes, publish_key, 4, "test")
    dispatcher.submit([message("a1", "a"), message("a2", "a"), message("b1", "b")])
    await until(lambda: handler.started == ["a1", "b1"])
    handler.release("b1")
    await until(lambda: outcomes.succeeded_ids == ["b1"])  # not held up by slow a1
    await asyncio.sleep(0)
    assert handler.started == ["a1", "b1"]  # a2 waits for a1, though workers are free
    handler.release("a2")  # its gate opening early changes nothing
    handler.release("a1")
    await until(lambda: outcomes.succeeded_ids == ["b1", "a1", "a2"])
    assert handler.started == ["a1", "b1", "a2"]
    await dispatcher.stop()


async def test_many_keys_on_many_workers_keep_fetch_order_per_key() -> None:
    seen: dict[str, list[int]] = defaultdict(list)
    active: set[str] = set()
    overlaps: list[str] = []
    most = 0

    async def handler(message: Message) -> None:
        nonlocal most
        key = message.key or ""
        if key in active:
            overlaps.append(message.id)
        active.add(key)
        most = max(most, len(active))
        number = int(message.id.split("-")[1])
        for _ in range(number % 5):  # handlers suspend for different numbers of turns
            await asyncio.sleep(0)
        seen[key].append(number)
        active.discard(key)

    outcomes = Outcomes()
    dispatcher = Dispatcher(handler, outcomes, publish_key, 8, "test")
    sent = [message(f"m-{n}", f"k{n % 3}") for n in range(300)]
    dispatcher.submit(sent[:150])
    dispatcher.submit(sent[150:])
    await until(lambda: len(outcomes.succeeded_ids) == 300)
    assert overlaps == []
    assert most > 1  # the keys did run side by side
    for key, numbers in seen.items():
        assert numbers == sorted(numbers), key
    await dispatcher.stop()


async def test_unkeyed_messages_use_every_worker_and_no_more() -> None:
    handler, outcomes = Gated(), Outcomes()
    dispatcher = Dispatcher(handler, outcomes, publish_key, 3, "test")
    dispatcher.submit([message(f"m{n}") for n in range(5)])
    await until(lambda: len(handler.started) == 3)
    assert dispatcher.running == 3
    handler.release("m0")
    await until(lambda: len(handler.started) == 4)
    handler.release("m1", "m2", "m3", "m4")
    await until(lambda: len(outcomes.succeeded_ids) == 5)
    assert handler.most_running == 3
    await dispatcher.stop()


async def test_growing_the_pool_starts_waiting_messages_at_once() -> None:
    handler, outcomes = Gated(), Outcomes()
    dispatcher = Dispatcher(handler, outcomes, publish_key, 1, "test")
    dispatcher.submit([message(f"m{n}") for n in range(4)])
    await until(lambda: handler.started == ["m0"])
    dispatcher.set_concurrency(3)
    await until(lambda: len(handler.running) == 3)
    handler.release("m0", "m1", "m2", "m3")
    await until(lambda: len(outcomes.succeeded_ids) == 4)
    await dispatcher.stop()


async def test_shrinking_the_pool_lets_running_handlers_finish_then_runs_fewer() -> None:
    handler, outcomes = Gated(), Outcomes()
    dispatcher = Dispatcher(handler, outcomes, publish_key, 3, "test")
    dispatcher.submit([message(f"m{n}") for n in range(3)])
    await until(lambda: len(handler.running) == 3)
    dispatcher.set_concurrency(1)
    dispatcher.submit([message(f"n{n}") for n in range(3)])
    handler.release("m0", "m1", "m2")  # none is cut short by the shrink
    await until(lambda: outcomes.succeeded_ids[:3] == ["m0", "m1", "m2"])
    await until(lambda: handler.started[3:] == ["n0"])
    handler.most_running = len(handler.running)
    handler.release("n0", "n1", "n2")
    await until(lambda: len(outcomes.succeeded_ids) == 6)
    assert handler.most_running == 1
    with pytest.raises(ValueError, match="concurrency must be at least 1, got 0"):
        dispatcher.set_concurrency(0)
    await dispatcher.stop()


async def test_a_failure_and_a_key_function_that_raises_are_reported() -> None:
    boom = RuntimeError("boom")

    async def handler(message: Message) -> None:
        if message.id == "bad":
            raise boom

    def key_of(message: Message) -> str | None:
        if message.id == "nokey":
            raise KeyError("order_id")
        return None

    outcomes = Outcomes()
    dispatcher = Dispatcher(handler, outcomes, key_of, 2, "test")
    dispatcher.submit([message("bad"), message("nokey"), message("good")])
    await until(lambda: outcomes.succeeded_ids == ["good"] and len(outcomes.failures) == 1)
    assert outcomes.failures == [("bad", boom)]
    assert outcomes.unkeyable_ids == ["nokey"]
    await dispatcher.stop()


async def test_a_handlers_own_cancellation_is_a_failure_and_the_worker_goes_on() -> None:
    async def handler(message: Message) -> None:
        if message.id == "cancels":
            raise asyncio.CancelledError

    outcomes = Outcomes()
    dispatcher = Dispatcher(handler, outcomes, publish_key, 1, "test")
    dispatcher.submit([message("cancels"), message("next")])
    await until(lambda: outcomes.succeeded_ids == ["next"])
    assert [id for id, _ in outcomes.failures] == ["cancels"]
    await dispatcher.stop()


async def test_drain_waits_for_running_handlers_and_stop_returns_the_unstarted() -> None:
    handler, outcomes = Gated(), Outcomes()
    dispatcher = Dispatcher(handler, outcomes, publish_key, 1, "test")
    dispatcher.submit([message("a1", "a"), message("a2", "a"), message("x")])
    await until(lambda: handler.started == ["a1"])
    drained = asyncio.create_task(dispatcher.drain(10.0))
    await asyncio.sleep(0)
    assert not drained.done()
    handler.release("a1", "a2", "x")
    assert await drained is True
    assert outcomes.succeeded_ids == ["a1"]  # nothing new started once draining
    unstarted = await dispatcher.stop()
    assert sorted(m.id for m in unstarted) == ["a2", "x"]


async def test_a_drain_that_times_out_says_so_and_stop_cancels_the_handler() -> None:
    handler, outcomes = Gated(), Outcomes()
    dispatcher = Dispatcher(handler, outcomes, publish_key, 1, "test")
    dispatcher.submit([message("stuck")])
    await until(lambda: handler.started == ["stuck"])
    assert await dispatcher.drain(0.01) is False
    assert await dispatcher.stop() == []
    assert handler.cancelled == ["stuck"]  # and not reported as a failure:
    assert outcomes.failures == [] and outcomes.succeeded_ids == []
