"""The two promises that need a real failure: a crash between commit and ack, and a broker
that is down while a transaction publishes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from millstream import Millstream, Transaction
from millstream.store import open_store
from tests.conftest import require_service
from tests.proxy import TcpProxy
from tests.support import until

ROOT = Path(__file__).resolve().parents[2]


def spawn(broker_url: str, store_url: str, topic: str, crash: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.procs.idempotent",
            broker_url,
            store_url,
            topic,
            "1" if crash else "0",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
async def test_a_crash_after_the_commit_and_before_the_ack_has_one_effect(tmp_path: Path) -> None:
    broker_url = f"sqlite:///{tmp_path}/broker.db?lease=1"
    store_url = f"sqlite:///{tmp_path}/state.db"
    publisher = Millstream(broker_url)
    await publisher.publish("numbers", 42)
    await publisher.broker.close()

    crashed = spawn(broker_url, store_url, "numbers", crash=True)
    _, stderr = await asyncio.to_thread(crashed.communicate, timeout=30)
    assert crashed.returncode == 9, stderr.decode()[-2000:]

    store = open_store(store_url)
    await store.open()
    try:
        # The effect committed, and the message was not acked: it is still waiting.
        assert await store.fetchval("SELECT COUNT(*) FROM effects") == 1
        check = Millstream(broker_url)
        await check.broker.connect()
        lag = await (await check.broker.subscribe("numbers", "effects", prefetch=1)).lag()
        await check.broker.close()
        assert lag is not None and lag.total == 1

        survivor = spawn(broker_url, store_url, "numbers", crash=False)
        try:
            # Redelivered after the lease, recognised, and acked without a second effect.
            async def drained() -> bool:
                probe = Millstream(broker_url)
                await probe.broker.connect()
                try:
                    sub = await probe.broker.subscribe("numbers", "effects", prefetch=1)
                    current = await sub.lag()
                    return current is not None and current.total == 0
                finally:
                    await probe.broker.close()

            for _ in range(150):
                if await drained():
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the redelivered message was never acked")
        finally:
            survivor.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.to_thread(survivor.communicate, timeout=30)
        assert survivor.returncode == 0, stderr.decode()[-2000:]
        assert b"already processed" in stderr
        assert await store.fetchval("SELECT COUNT(*) FROM effects") == 1
    finally:
        await store.close()


async def test_an_order_written_while_the_broker_is_down_is_delivered_once_it_is_back(
    tmp_path: Path,
) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    import uuid

    topic = f"orders-{uuid.uuid4().hex[:8]}"
    with TcpProxy("127.0.0.1", 6379) as proxy:
        ms = Millstream(
            f"redis://127.0.0.1:{proxy.port}/0?lease=2",
            store_url=f"sqlite:///{tmp_path}/state.db",
            outbox_poll_interval=0.05,
            reconnect_backoff=0.05,
            reconnect_max_backoff=0.2,
            settle_interval=0.001,
        )
        ms.store.schema(
            "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY);"
            "CREATE TABLE IF NOT EXISTS seen (order_id TEXT NOT NULL)"
        )

        @ms.consumer(topic, group="audit", idempotent=True)
        async def audit(event: dict[str, str], tx: Transaction) -> None:
            await tx.execute("INSERT INTO seen (order_id) VALUES ($1)", event["id"])

        async with ms:
            proxy.pause()
            proxy.cut()
            # The "request": write the order and its event in one transaction; no broker needed.
            async with ms.store.transaction() as tx:
                await tx.execute("INSERT INTO orders (id) VALUES ($1)", "o-1")
                tx.publish(topic, {"id": "o-1"})
            assert await ms.store.fetchval("SELECT COUNT(*) FROM orders") == 1
            relay = ms.relay
            assert relay is not None
            await until(lambda: relay.stats.failed_batches >= 1)
            assert await ms.store.outbox_pending() == 1

            proxy.resume()
            seen = ms.store

            async def delivered() -> bool:
                return bool(await seen.fetchval("SELECT COUNT(*) FROM seen") == 1)

            for _ in range(300):
                if await delivered() and await ms.store.outbox_pending() == 0:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the event was not delivered after the broker came back")
            await asyncio.sleep(0.3)
            assert await ms.store.fetchval("SELECT COUNT(*) FROM seen") == 1
        import redis.asyncio

        client = redis.asyncio.Redis(host="127.0.0.1", port=6379)
        keys = [key async for key in client.scan_iter(match=f"{topic}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_a_relay_that_published_twice_still_has_one_effect(tmp_path: Path) -> None:
    """A relay that died after publishing and before marking: the rows go out again."""
    ms = Millstream("memory://", store_url=f"sqlite:///{tmp_path}/state.db", settle_interval=0.001)
    ms.store.schema("CREATE TABLE IF NOT EXISTS seen (n INTEGER NOT NULL)")
    handled: list[int] = []

    @ms.consumer("numbers", idempotent=True)
    async def count(n: int, tx: Transaction) -> None:
        handled.append(n)
        await tx.execute("INSERT INTO seen (n) VALUES ($1)", n)

    async with ms:
        relay = ms.relay
        assert relay is not None
        await relay.stop()  # publish by hand below
        async with ms.store.transaction() as tx:
            tx.publish("numbers", 1)
            tx.publish("numbers", 2)
        import time

        claimed = await ms.store.claim_outbox(10, time.time(), lease=0.01)
        from millstream.message import OutgoingMessage

        messages = [OutgoingMessage(r.payload, id=r.message_id) for _, r in claimed]
        await ms.publish_batch("numbers", messages)  # published, then "crashed" before marking
        await asyncio.sleep(0.05)
        await relay.relay_once()  # the lease ran out: another relay publishes them again
        await until(lambda: len(handled) == 2)
        await asyncio.sleep(0.2)
        assert sorted(handled) == [1, 2]
        assert await ms.store.fetchval("SELECT COUNT(*) FROM seen") == 2
        assert await ms.store.outbox_pending() == 0


async def test_a_store_first_used_after_the_start_opens_and_relays(tmp_path: Path) -> None:
    """A route that is the only user of ``ms.store`` still gets a schema and a relay."""
    ms = Millstream("memory://", store_url=f"sqlite:///{tmp_path}/state.db", settle_interval=0.001)
    seen: list[bytes] = []

    @ms.consumer("notes")
    async def note(body: bytes) -> None:
        seen.append(body)

    async with ms:
        assert ms.opened_store is None and ms.relay is None
        async with ms.store.transaction() as tx:  # opens on first use
            await tx.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
            tx.publish("notes", b"hello")
        await until(lambda: seen == [b"hello"])
        assert ms.relay is not None
    assert not ms.store.is_open  # closed with the app
    health = await ms.web.health()  # a probe after the stop must not reopen it
    assert health.store is None and not ms.store.is_open
