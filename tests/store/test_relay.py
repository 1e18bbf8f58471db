"""The outbox relay's promises: one key's messages in order, even across a failed batch; a
stop that finishes the batch in flight and never hangs on a broker that is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from millstream.errors import BrokerError
from millstream.message import OutgoingMessage
from millstream.store import Store
from millstream.store.outbox import OutboxRelay


class Wire:
    """A publish function standing in for the broker: records, fails or stalls on demand."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.failures = 0
        self.delay = 0.0
        self.refused: set[bytes] = set()

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker unreachable")
        if any(m.payload in self.refused for m in messages):
            raise BrokerError("message too large")
        self.sent.extend((topic, m.payload) for m in messages)


async def reconnect() -> None:
    return None


@pytest.fixture
async def store(opened: Store) -> AsyncIterator[Store]:
    yield opened


async def write(store: Store, *events: tuple[str, str | None, str]) -> None:
    async with store.transaction() as tx:
        for topic, key, body in events:
            tx.publish(topic, body.encode(), key=key)


async def test_a_key_stays_in_order_across_a_failed_batch(store: Store) -> None:
    wire = Wire()
    relay = OutboxRelay(store, wire.publish, reconnect, poll_interval=0.02, max_backoff=0.2)
    wire.failures = 1
    await write(store, ("orders", "o-1", "PAID"))
    assert await relay.relay_once() == 1  # refused: back in the outbox with a delay
    await write(
        store, ("orders", "o-1", "SHIPPED"), ("orders", "o-2", "PAID"), ("other", None, "x")
    )
    # The newer o-1 row is due now but waits for the older one; o-2 and unkeyed rows go.
    assert await relay.relay_once() == 2
    assert wire.sent == [("orders", b"PAID"), ("other", b"x")]
    await asyncio.sleep(0.3)  # the retry of the refused row is due
    while await relay.relay_once():
        pass
    assert [body for topic, body in wire.sent if topic == "orders"] == [
        b"PAID",
        b"PAID",
        b"SHIPPED",
    ]
    assert await store.outbox_pending() == 0


async def test_stop_finishes_the_batch_in_flight(store: Store) -> None:
    wire = Wire()
    wire.delay = 0.3
    relay = OutboxRelay(store, wire.publish, reconnect, poll_interval=0.02)
    relay.start()
    await write(store, ("orders", "o-1", "PAID"))
    await asyncio.sleep(0.1)  # the relay is publishing it
    await relay.stop(flush_timeout=2)
    assert wire.sent == [("orders", b"PAID")]
    assert await store.outbox_pending() == 0


async def test_stop_with_the_broker_down_returns_and_leaves_the_rows_unclaimed(
    store: Store,
) -> None:
    wire = Wire()
    wire.failures = 1_000
    relay = OutboxRelay(store, wire.publish, reconnect, poll_interval=0.02)
    relay.start()
    await write(store, ("orders", "o-1", "PAID"), ("orders", "o-2", "PAID"))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await relay.stop(flush_timeout=2)
    assert time.monotonic() - started < 1.0
    assert await store.outbox_pending() == 2
    claimed = await store.fetchval(
        "SELECT COUNT(*) FROM millstream_outbox WHERE claimed_until IS NOT NULL"
    )
    assert claimed == 0  # the next relay to start takes them at once, no lease to wait out


async def test_a_stop_that_times_out_hands_the_claimed_rows_back(store: Store) -> None:
    wire = Wire()
    wire.delay = 10.0  # a publish that never answers
    relay = OutboxRelay(store, wire.publish, reconnect, poll_interval=0.02)
    relay.start()
    await write(store, ("orders", "o-1", "PAID"))
    await asyncio.sleep(0.1)
    await relay.stop(flush_timeout=0.3)
    claimed = await store.fetchval(
        "SELECT COUNT(*) FROM millstream_outbox WHERE claimed_until IS NOT NULL"
    )
    assert (claimed, await store.outbox_pending()) == (0, 1)


async def test_a_message_the_broker_refuses_does_not_hold_back_the_rest(store: Store) -> None:
    wire = Wire()
    wire.refused = {b"huge"}
    relay = OutboxRelay(store, wire.publish, reconnect, poll_interval=0.02)
    await write(
        store,
        ("orders", "o-1", "PAID"),
        ("orders", "o-2", "huge"),
        ("orders", "o-2", "SHIPPED"),  # after the refused one, on its key: waits for it
        ("orders", "o-3", "PAID"),
    )
    assert await relay.relay_once() == 4
    assert wire.sent == [("orders", b"PAID"), ("orders", b"PAID")]
    assert await store.outbox_pending() == 2
    assert relay.stats.last_error == "BrokerError: message too large"
    wire.refused = set()  # say the operator raised the broker's limit
    await asyncio.sleep(0.3)
    while await relay.relay_once():
        pass
    assert [body for _, body in wire.sent][2:] == [b"huge", b"SHIPPED"]
