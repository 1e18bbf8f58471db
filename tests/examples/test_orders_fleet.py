"""Three served order services on one broker and one PostgreSQL, one of them killed under load.

Each instance is ``millstream run examples.orders:app`` on a port of its own,
with a stable ``MILLSTREAM_MEMBER``, the store on PostgreSQL and the cache
bus on Redis; the broker is a fresh one per test (tests/examples/fleet.py).
Orders are posted to the three in turn. Payments are published to the
broker and handled by whichever instance gets them:

- paid one at a time, each order is read from the instances that did not
  handle its payment, which had it cached as CREATED: they show PAID well
  within the cache's 30 s time to live, so the invalidation crossed over;
- then a flow of payments (a quarter of them sent twice, with one message
  id, as a payment provider retries) runs while one instance is SIGKILLed
  in the middle of a payment: the test holds the unpaid orders' rows locked
  until the victim is inside a handler, so it certainly dies holding work.
  The survivors take over what it held once its lease runs out; every
  order ends PAID, with one status change and one notification each, no
  payment dead-lettered, and the survivors stop cleanly.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from millstream import Millstream, OutgoingMessage
from tests.conftest import report, require_service
from tests.examples.fleet import BROKERS, Instance, fleet_broker, start_fleet, stop_fleet
from tests.examples.served import AUTH, ORDER, SECRET, eventually, status_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

INSTANCES = 3
WATCHED = 6  # paid one at a time, then read from the instances that did not handle them
LOADED = 120  # paid in a flow while an instance is killed
BATCH = 10
PACE = 0.1  # seconds between batches of the flow
FRESH_WITHIN = 5.0  # a read showing PAID after the payment: far below the cache's 30 s TTL
OUTBOX_LEASE = 30.0  # a relay batch the victim claimed waits this long for another instance


@pytest.mark.parametrize("broker_name", BROKERS)
async def test_three_instances_share_orders_and_take_over_from_one_killed_under_load(
    broker_name: str, postgres_url: str, tmp_path: Path
) -> None:
    require_service("Redis", "127.0.0.1", 6379)  # the cache bus
    with fleet_broker(broker_name, tmp_path) as broker:
        env = {
            "MILLSTREAM_BROKER_URL": broker.url,
            "MILLSTREAM_STORE_URL": postgres_url,
            "MILLSTREAM_CACHE_URL": "redis://127.0.0.1:6379/0",
            "MILLSTREAM_JWT_SECRET": SECRET,
        }
        instances = await start_fleet(env, INSTANCES, tmp_path)
        publisher = Millstream(broker.url)
        victim, survivors = instances[0], instances[1:]
        try:
            orders = await _post_orders(instances, WATCHED + LOADED)
            watched, loaded = orders[:WATCHED], orders[WATCHED:]
            fresh_after = await _pay_and_read_elsewhere(publisher, instances, watched)
            async with _database(postgres_url) as db:
                took = await _kill_under_load(publisher, db, victim, loaded)
                finished = await _all_paid(db, len(orders), within=(broker.lease or 0) + 30)
                settled = await _notified(db, len(orders), within=OUTBOX_LEASE + 15)
                changes = await db.fetch(
                    "SELECT msg_key, COUNT(*) AS n FROM millstream_outbox "
                    "WHERE topic = 'orders.status-changed' GROUP BY msg_key"
                )
                applied = await db.fetchval(
                    "SELECT COUNT(*) FROM millstream_processed WHERE grp = 'orders'"
                )
                stored = await db.fetchval("SELECT COUNT(*) FROM orders")
            taken_over = [
                await s.metric("millstream_messages_taken_over_total", consumer="payments")
                for s in survivors
            ]
            dead = [
                (await s.http.get("/admin/consumers/payments/dead-letters", headers=AUTH)).json()
                for s in survivors
            ]
        finally:
            codes = await stop_fleet(instances)
            await publisher.broker.close()
    logs = "\n".join(i.tail() for i in instances)

    assert stored == len(orders)
    # A payment applied twice would move a PAID order to PAID: dead-lettered as illegal.
    assert all(letters["items"] == [] for letters in dead), dead
    assert applied == len(orders), "the ledger holds a payment id twice, or misses one"
    assert {c["msg_key"]: c["n"] for c in changes} == dict.fromkeys(orders, 1), (
        "an order changed status twice, or not at all"
    )
    assert sum(taken_over) >= 1, f"the survivors took over nothing the victim held\n{logs}"
    assert [codes[s.member] for s in survivors] == [0, 0], logs
    # What the victim held is back after its lease (RabbitMQ: at once, its connection
    # dropped); the rest is the survivors handling it and the flow's tail.
    assert finished - took.killed_at < (broker.lease or 0) + 10, logs
    report(
        f"three served order services, one SIGKILLed [{broker_name}]",
        invalidation_s=max(fresh_after),
        held_by_victim=took.held,
        taken_over=int(sum(taken_over)),
        kill_to_all_paid_s=finished - took.killed_at,
        kill_to_all_notified_s=settled - took.killed_at,
    )


async def _post_orders(instances: Sequence[Instance], count: int) -> list[str]:
    """Post ``count`` orders to the instances in turn; their ids."""
    ids = []
    for n in range(count):
        reply = await instances[n % len(instances)].http.post(
            "/api/v1/orders", json=ORDER, headers=AUTH
        )
        assert reply.status_code == 201, reply.text
        ids.append(reply.json()["id"])
    return ids


def _payment(order_id: str) -> OutgoingMessage:
    body = {"order_id": order_id, "kind": "paid", "amount": "19.00"}  # ORDER's total
    return OutgoingMessage(json.dumps(body).encode(), key=order_id)


async def _pay_and_read_elsewhere(
    publisher: Millstream, instances: Sequence[Instance], orders: Sequence[str]
) -> list[float]:
    """Every instance caches each order as CREATED; then each is paid, and the instances
    that did not handle its payment read PAID. Returns how long each such read took to."""
    hits = [await i.metric("millstream_cache_hits_total", cache="orders") for i in instances]
    for order_id in orders:
        for instance in instances:
            for _ in range(2):  # the second read is served from the cache
                assert await status_of(instance.http, order_id) == "CREATED"
    for instance, before in zip(instances, hits, strict=True):
        now = await instance.metric("millstream_cache_hits_total", cache="orders")
        assert now - before >= len(orders), f"{instance.member} did not cache the orders"

    delays = []
    for order_id in orders:
        acked = await _acked(instances)
        await publisher.publish_batch("payments", [_payment(order_id)])
        handler = await _who_handled(instances, acked)
        handled_at = time.monotonic()
        for other in instances:
            if other is handler:
                continue
            await eventually(lambda o=other, i=order_id: status_of(o.http, i), "PAID", FRESH_WITHIN)
            delays.append(time.monotonic() - handled_at)
    return delays


async def _acked(instances: Sequence[Instance]) -> list[float]:
    return [
        await i.metric("millstream_messages_acked_total", consumer="payments") for i in instances
    ]


async def _who_handled(instances: Sequence[Instance], before: list[float]) -> Instance:
    """The one instance whose payments consumer acked one more message than ``before``."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rose = [
            i
            for i, now, then in zip(instances, await _acked(instances), before, strict=True)
            if now > then
        ]
        if rose:
            assert len(rose) == 1, f"one payment acked by {[i.member for i in rose]}"
            return rose[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no instance handled the payment within 15 s")


@asynccontextmanager
async def _database(url: str) -> AsyncIterator[asyncpg.Connection]:
    db = await asyncpg.connect(url)
    try:
        yield db
    finally:
        await db.close()


@dataclass(frozen=True)
class _Kill:
    """When the victim was killed (monotonic), and how many payments it held then."""

    killed_at: float
    held: int


async def _kill_under_load(
    publisher: Millstream, db: asyncpg.Connection, victim: Instance, orders: Sequence[str]
) -> _Kill:
    """Pay ``orders`` in a flow (a quarter of the payments twice); a third of the way in,
    lock the unpaid orders' rows so every handler that starts on one waits, SIGKILL the
    victim once it is inside one, and let the rest go on."""
    payments = [_payment(order_id) for order_id in orders]
    flow = payments + payments[::4]  # the same message again: one id, one effect
    batches = [flow[n : n + BATCH] for n in range(0, len(flow), BATCH)]
    flowing = asyncio.create_task(_publish(publisher, batches))
    try:
        await _until(lambda: _paid(db), len(orders) // 3, within=60)
        async with db.transaction():
            await db.execute("SELECT id FROM orders WHERE status = 'CREATED' FOR UPDATE")
            held = await _held(victim)
            victim.process.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
        await asyncio.to_thread(victim.process.wait, 10)
        await flowing
    finally:
        flowing.cancel()
    return _Kill(killed_at, held)


async def _publish(publisher: Millstream, batches: list[list[OutgoingMessage]]) -> None:
    for batch in batches:
        await publisher.publish_batch("payments", batch)
        await asyncio.sleep(PACE)


async def _held(victim: Instance) -> int:
    """Wait until the victim's payments consumer holds messages and keeps holding them
    (a handler waiting on a locked row); how many."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        first = await victim.metric("millstream_messages_inflight", consumer="payments")
        await asyncio.sleep(0.2)
        second = await victim.metric("millstream_messages_inflight", consumer="payments")
        if first and second:
            return int(second)
    raise AssertionError(f"{victim.member} never held a payment while the rows were locked")


async def _paid(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT COUNT(*) FROM orders WHERE status = 'PAID'"))


async def _until(read: Callable[[], Awaitable[int]], at_least: int, within: float) -> float:
    """Wait until ``await read()`` reaches ``at_least``; the monotonic time it did."""
    deadline = time.monotonic() + within
    while (value := await read()) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected at least {at_least} within {within:g}s, got {value}")
        await asyncio.sleep(0.05)
    return time.monotonic()


async def _all_paid(db: asyncpg.Connection, count: int, within: float) -> float:
    """Every order PAID: none lost, none stuck with a dead member."""
    return await _until(lambda: _paid(db), count, within)


async def _notified(db: asyncpg.Connection, count: int, within: float) -> float:
    """One notification per order, PAID, each written once."""

    async def notifications() -> int:
        rows = await db.fetch("SELECT order_id, status FROM order_notifications")
        assert {r["status"] for r in rows} <= {"PAID"}, rows
        return len(rows)

    return await _until(notifications, count, within)
