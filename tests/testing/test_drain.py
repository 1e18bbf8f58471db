"""``t.drain()``: retries on the harness's clock, dead letters, the outbox, and what is stuck."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import BaseModel

from millstream import Millstream, Retry, Transaction
from millstream.testing import DrainTimeout, TestApp


class Payment(BaseModel):
    order_id: str
    status: str
    amount: int


async def test_a_handler_failing_twice_with_30s_backoffs_is_handled_on_the_third_attempt() -> None:
    ms = Millstream("memory://")
    attempts: list[int] = []

    @ms.consumer("payments", group="orders", retry=Retry(attempts=5, backoff=30, jitter=0))
    async def on_payment(payment: Payment) -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise ConnectionError("the ledger is down")

    async with TestApp(ms) as t:
        assert t.clock is not None
        await t.publish("payments", Payment(order_id="o-1", status="PAID", amount=100))
        await t.drain(timeout=5)
        assert attempts == [1, 2, 3]
        assert t.handled(on_payment) == 1
        assert t.calls(on_payment) == [Payment(order_id="o-1", status="PAID", amount=100)] * 3
        # The two backoffs (30 s, then 60 s) passed on the harness's clock, not the wall's.
        assert t.clock() == pytest.approx(90.0)
        stats = t.stats("on_payment")
        assert (stats.consumed, stats.acked, stats.retried, stats.dead) == (3, 1, 2, 0)
        assert t.dead_letters("payments") == []


async def test_five_failed_attempts_end_in_the_dead_letters_with_the_reason() -> None:
    ms = Millstream("memory://")

    @ms.consumer("payments", group="orders", retry=Retry(attempts=5, backoff=10, jitter=0))
    async def on_payment(payment: Payment) -> None:
        raise ConnectionError(f"cannot reach the bank for {payment.order_id}")

    async with TestApp(ms) as t:
        await t.publish("payments", {"order_id": "o-9", "status": "PAID", "amount": 3})
        await t.drain(timeout=5)
        [letter] = t.dead_letters("payments", group="orders")
        assert letter.attempts == 5
        assert letter.error == (
            "attempts exhausted (5 of 5): ConnectionError: cannot reach the bank for o-9"
        )
        assert t.handled(on_payment) == 0
        assert len(t.calls(on_payment)) == 5
        # 10, 20, 40, then 60 s: the backoff doubles up to max_backoff (60 s by default).
        assert t.clock is not None and t.clock() == pytest.approx(10 + 20 + 40 + 60)


async def test_an_undecodable_payload_is_dead_at_once_and_never_reaches_the_handler() -> None:
    ms = Millstream("memory://")

    @ms.consumer("payments", group="orders")
    async def on_payment(payment: Payment) -> None:
        raise AssertionError("never called")

    async with TestApp(ms) as t:
        await t.publish("payments", b"not json")
        await t.drain(timeout=5)
        [letter] = t.dead_letters("payments")
        assert "does not validate as Payment" in letter.error
        assert t.calls(on_payment) == [] and t.handled(on_payment) == 0


async def test_the_outbox_is_relayed_as_part_of_draining() -> None:
    ms = Millstream("memory://")

    @ms.consumer("payments", group="orders")
    async def on_payment(payment: Payment, tx: Transaction) -> None:
        tx.publish("orders.paid", {"order_id": payment.order_id}, key=payment.order_id)

    @ms.consumer("orders.paid", group="mail")
    async def mail(event: dict[str, str]) -> None:
        pass

    async with TestApp(ms) as t:
        await t.publish("payments", Payment(order_id="o-2", status="PAID", amount=5))
        await t.drain(timeout=5)
        [paid] = t.published("orders.paid")
        assert (paid.value, paid.key, paid.topic) == ({"order_id": "o-2"}, "o-2", "orders.paid")
        assert paid.payload == b'{"order_id":"o-2"}'
        # The relayed message was handled too before drain returned.
        assert t.handled(mail) == 1 and t.calls(mail) == [{"order_id": "o-2"}]
        assert await ms.store.outbox_pending() == 0
        assert t.published("payments") == []  # the test's own publish is not the app's


async def test_a_handler_that_never_returns_makes_drain_fail_naming_it() -> None:
    ms = Millstream("memory://")
    never = asyncio.Event()

    @ms.consumer("payments", group="orders")
    async def stuck(payment: Payment) -> None:
        await never.wait()

    async with TestApp(ms, drain_timeout=0.1) as t:
        message_id = await t.publish("payments", Payment(order_id="o", status="PAID", amount=1))
        with pytest.raises(DrainTimeout) as failure:
            await t.drain(timeout=0.3)
        text = str(failure.value)
        assert text.startswith("drain() did not settle within 0.3s:")
        assert f"consumer 'stuck' is still handling message '{message_id}' (attempt 1), for" in text
        assert "consumer 'stuck' (RUNNING) holds 1 message(s) not yet settled" in text


async def test_drain_waits_for_a_slow_handler_without_moving_the_clock() -> None:
    ms = Millstream("memory://")
    started, release = asyncio.Event(), asyncio.Event()

    @ms.consumer("payments", group="orders")
    async def slow(payment: Payment) -> None:
        started.set()
        await release.wait()

    async with TestApp(ms) as t:
        await t.publish("payments", Payment(order_id="o", status="PAID", amount=1))
        drained = asyncio.create_task(t.drain(timeout=10))
        await started.wait()
        assert not drained.done()  # the handler runs: drain waits for it
        release.set()
        await drained
        assert t.handled(slow) == 1
        assert t.clock is not None and t.clock() == 0.0  # no lease ran out: nothing moved it


async def test_a_test_store_and_broker_leave_the_apps_own_untouched(tmp_path: Path) -> None:
    own_store = tmp_path / "state.db"
    ms = Millstream("memory://", store_url=f"sqlite:///{own_store}")
    ms.store.schema("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY)")
    broker, store = ms.broker, ms.store

    @ms.consumer("payments", group="orders")
    async def on_payment(payment: Payment, tx: Transaction) -> None:
        await tx.execute("INSERT INTO seen (id) VALUES ($1)", payment.order_id)

    for run in range(2):  # the same app, again: each run starts from an empty store
        async with TestApp(ms) as t:
            assert ms.broker is not broker and ms.store is not store
            assert ms.settings.store_url.startswith("sqlite:///") and "millstream-test-" in (
                ms.settings.store_url
            )
            await t.publish("payments", Payment(order_id=f"o-{run}", status="PAID", amount=1))
            await t.drain(timeout=5)
            assert await ms.store.fetch("SELECT id FROM seen") == [{"id": f"o-{run}"}]
        assert ms.broker is broker and ms.store is store and not ms.started
        assert ms.settings.store_url == f"sqlite:///{own_store}"
    assert not own_store.exists()


async def test_delayed_publishes_are_handled_when_the_harness_clock_reaches_them() -> None:
    """A reminder published with ``delay=600`` and one a handler sends through the outbox
    with ``delay=3600``: drain moves the clock to each in turn, in milliseconds."""
    ms = Millstream("memory://")
    handled: list[tuple[str, float]] = []

    @ms.consumer("orders", group="reminders")
    async def schedule(order: dict[str, str], tx: Transaction) -> None:
        tx.publish("reminders", {"order_id": order["order_id"]}, delay=3600)

    @ms.consumer("reminders", group="mail")
    async def remind(reminder: dict[str, str]) -> None:
        assert t.clock is not None
        handled.append((reminder["order_id"], t.clock()))

    async with TestApp(ms) as t:
        await t.publish("reminders", {"order_id": "o-1"}, delay=600)
        await t.publish("orders", {"order_id": "o-2"})
        await t.drain(timeout=5)
        assert [order for order, _ in handled] == ["o-1", "o-2"]
        assert handled[0][1] == pytest.approx(600, abs=1)
        assert handled[1][1] == pytest.approx(3600, abs=1)
        [sent] = t.published("reminders")
        assert sent.value == {"order_id": "o-2"}
