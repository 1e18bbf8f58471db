"""The Redis broker under faults: a silent partition, a server restart, refused credentials."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis.asyncio

from millstream import Millstream
from millstream.brokers.redis.broker import RedisBroker
from millstream.errors import AuthenticationError, BrokerUnavailable
from millstream.runtime import ConsumerState
from tests.brokers.redis_server import RedisServer
from tests.brokers.redis_support import opened
from tests.proxy import TcpProxy
from tests.support import (
    at_least,
    consumer_lag,
    drain,
    events,
    numbers,
    total_lag,
    until,
    until_equal,
)


async def test_a_silent_partition_is_noticed_within_ten_seconds_and_loses_nothing(
    shared: str, topic: str, proxy: TcpProxy
) -> None:
    ms = Millstream(
        f"redis://127.0.0.1:{proxy.port}/0?lease=2", reconnect_backoff=0.05, poll_timeout=0.2
    )
    publisher = await opened(shared)  # not through the proxy: publishing goes on
    handled: list[int] = []

    @ms.consumer(topic, group="billing", concurrency=4)
    async def handle(event: dict[str, int]) -> None:
        await asyncio.sleep(0.005)
        handled.append(event["n"])

    try:
        async with ms:
            consumer = ms.consumers["handle"]
            await publisher.publish(topic, events(200))
            await until(at_least(handled, 50))
            proxy.blackhole()  # packets dropped both ways, nothing reset
            started = time.monotonic()
            publish_failed = 0.0

            async def publish() -> None:  # through the app's own pool
                nonlocal publish_failed
                try:
                    await ms.publish(topic, {"n": -1})
                finally:
                    publish_failed = time.monotonic() - started

            publishing = asyncio.ensure_future(publish())
            await publisher.publish(topic, events(100, start=200))
            await until(lambda: consumer.state is not ConsumerState.RUNNING, within=10)
            noticed = time.monotonic() - started
            with pytest.raises(BrokerUnavailable, match="stopped answering"):
                await publishing

            proxy.heal()
            await until(lambda: set(range(300)) <= set(handled), within=30)
            await until(lambda: consumer.state is ConsumerState.RUNNING)
            await until_equal(lambda: consumer_lag(ms), 0)
    finally:
        await publisher.close()

    assert publish_failed < 10 and noticed < 10, (publish_failed, noticed)
    assert consumer.stats.reconnects >= 1


@pytest.mark.slow
async def test_a_server_restart_mid_stream_loses_nothing(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        topic = "payments"
        ms = Millstream(f"{server.url}?lease=1", reconnect_backoff=0.05, poll_timeout=0.2)
        handled: list[int] = []

        @ms.consumer(topic, group="billing", concurrency=4)
        async def handle(event: dict[str, int]) -> None:
            await asyncio.sleep(0.003)
            handled.append(event["n"])

        publisher = await opened(server.url)
        try:
            await publisher.publish(topic, events(600))
            async with ms:
                consumer = ms.consumers["handle"]
                await until(lambda: len(set(handled)) >= 200, within=10)
                server.restart(kill=True, down_for=0.5)  # SIGKILL: the AOF must carry it
                await until(lambda: consumer.state is ConsumerState.RUNNING, within=10)
                await publisher.publish(topic, events(100, start=600))
                await until(lambda: len(set(handled)) == 700, within=20)
                await until_equal(lambda: consumer_lag(ms), 0)
        finally:
            await publisher.close()

        assert set(handled) == set(range(700))
        assert consumer.stats.reconnects >= 1


async def test_a_wrong_password_is_refused_at_connect_with_the_fix(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", password="right") as server:
        url = f"redis://:wrong@127.0.0.1:{server.port}/0"
        broker = RedisBroker.from_url(url)
        with pytest.raises(AuthenticationError) as caught:
            await broker.connect()
        message = str(caught.value)
        assert f"redis://:***@127.0.0.1:{server.port}/0" in message
        assert "refused the credentials" in message and "check the user and password" in message
        assert "wrong" not in message.replace("WRONGPASS", "")
        await broker.close()

        ms = Millstream(f"redis://127.0.0.1:{server.port}/0")  # no password at all
        with pytest.raises(AuthenticationError, match="wants a password: put it in the URL"):
            await ms.start()
        await ms.broker.close()


async def test_an_acl_user_needs_only_the_commands_the_error_names(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        admin = redis.asyncio.Redis.from_url(server.url)
        needed = ["+@stream", "+@sortedset", "+@scripting", "+ping", "+time", "+del"]
        await admin.acl_setuser("app", enabled=True, passwords=["+pw"], keys=["*"], commands=needed)
        await admin.acl_setuser(
            "noscripts", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-evalsha"]
        )
        await admin.aclose()
        base = f"127.0.0.1:{server.port}/0"

        app = await opened(f"redis://app:pw@{base}?trim=0")  # no INFO: no version check
        try:
            sub = await app.subscribe("payments", "billing", prefetch=10)
            await app.publish("payments", events(3))
            first, second, third = await sub.fetch(10, 1.0)
            await sub.settle([first], [(second, 0.0)], [(third, "FatalError: no")])
            assert numbers(await drain(sub)) == [1]
            await sub.trim()
            dlq = await app.dead_letters("payments", "billing")
            assert await dlq.replay() == 1 and numbers(await drain(sub)) == [2]
            assert await dlq.purge() == 0 and await total_lag(sub) == 0
            await sub.close()
        finally:
            await app.close()

        limited = await opened(f"redis://noscripts:pw@{base}")
        try:
            with pytest.raises(AuthenticationError) as caught:
                await limited.subscribe("payments", "billing", prefetch=10)
            assert "refused a command" in str(caught.value) and "'evalsha'" in str(caught.value)
            assert "+@stream +@sortedset +@scripting +ping +time +del" in str(caught.value)
        finally:
            await limited.close()


async def test_a_changed_password_stops_a_running_consumer(tmp_path: Path) -> None:
    with (
        RedisServer(tmp_path / "redis", password="old") as server,
        TcpProxy("127.0.0.1", server.port) as proxy,
    ):
        ms = Millstream(f"redis://:old@127.0.0.1:{proxy.port}/0", reconnect_backoff=0.05)
        handled: list[int] = []

        @ms.consumer("payments", group="billing")
        async def handle(event: dict[str, int]) -> None:
            handled.append(event["n"])

        async with ms:
            consumer = ms.consumers["handle"]
            await ms.publish("payments", {"n": 1})
            await until(lambda: handled == [1])
            admin = redis.asyncio.Redis.from_url(server.url)
            await admin.config_set("requirepass", "new")
            await admin.client_kill_filter(_type="normal", skipme=True)
            await admin.aclose()

            await until(lambda: consumer.state is ConsumerState.FAILED, within=5)
            attempts = proxy.accepted
            await asyncio.sleep(1.0)
            assert proxy.accepted == attempts
