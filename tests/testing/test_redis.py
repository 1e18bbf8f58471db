"""``TestApp(ms, broker_url=...)``: the same test on a real broker, drained in real time."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from millstream import Millstream, Retry, Transaction
from millstream.testing import DrainTimeout, TestApp
from tests.conftest import require_service

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def topic() -> AsyncIterator[str]:
    """A topic name no other test uses; its keys are deleted afterwards."""
    require_service("Redis", "127.0.0.1", 6379)
    import redis.asyncio

    name = f"harness-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.asyncio.Redis.from_url(URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{name}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_retries_dead_letters_and_the_outbox_on_redis(topic: str) -> None:
    ms = Millstream("memory://")
    failures = {"flaky": 1}

    @ms.consumer(topic, group="orders", retry=Retry(attempts=3, backoff=0.05, jitter=0))
    async def on_payment(payment: dict[str, str], tx: Transaction) -> None:
        if payment["kind"] == "bad":
            raise ValueError(f"cannot apply {payment['id']}")
        if failures.get(payment["id"], 0):
            failures[payment["id"]] -= 1
            raise ConnectionError("the ledger is down")
        tx.publish(f"{topic}.done", {"id": payment["id"]}, key=payment["id"])

    @ms.consumer(f"{topic}.done", group="mail")
    async def mail(event: dict[str, str]) -> None:
        pass

    async with TestApp(ms, broker_url=URL) as t:
        assert t.clock is None and t.hub is None and ms.broker.url == URL
        await t.publish(topic, {"id": "flaky", "kind": "ok"}, key="flaky")
        await t.publish(topic, {"id": "fine", "kind": "ok"}, key="fine")
        await t.publish(topic, {"id": "broken", "kind": "bad"}, key="broken")
        await t.drain(timeout=30)
        assert t.handled(on_payment) == 2 and len(t.calls(on_payment)) == 2 + 1 + 3
        assert sorted(each.value["id"] for each in t.published(f"{topic}.done")) == [
            "fine",
            "flaky",
        ]
        assert t.handled(mail) == 2
        [letter] = t.dead_letters(topic, group="orders")
        assert letter.error == "attempts exhausted (3 of 3): ValueError: cannot apply broken"
    assert ms.broker.url == "memory://"


async def test_a_consumer_that_cannot_connect_is_not_settled() -> None:
    ms = Millstream("memory://", reconnect_backoff=0.05)

    @ms.consumer("payments", group="orders")
    async def on_payment(payment: dict[str, str]) -> None:
        pass

    # Nothing listens on port 1: the broker refuses every connection.
    async with TestApp(ms, broker_url="redis://127.0.0.1:1/0") as t:
        with pytest.raises(DrainTimeout) as failure:
            await t.drain(timeout=0.2)
    assert "consumer 'on_payment' (RECONNECTING) cannot tell its lag on topic 'payments'" in (
        str(failure.value)
    )
