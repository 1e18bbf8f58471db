"""The Redis Streams broker beyond the shared conformance suite, against real servers.

The shared Redis at 127.0.0.1:6379 serves most tests, each on keys named by
a fresh uuid that it deletes afterwards. Tests that restart, kill or lock a
server start a private ``redis-server`` (tests/brokers/redis_server.py);
tests that break the network put a TCP proxy in between (tests/proxy.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
import redis.asyncio
from redis.asyncio.connection import SSLConnection

from millstream import Message, Millstream, OutgoingMessage
from millstream.brokers import connect
from millstream.brokers.redis.broker import RedisBroker
from millstream.brokers.redis.connection import open_pool
from millstream.errors import AuthenticationError, BrokerUnavailable, ConfigError
from millstream.runtime import ConsumerState
from tests.brokers.redis_server import RedisServer, delete_keys, free_port
from tests.procs.group import ends, ready, spawn, stop
from tests.proxy import TcpProxy
from tests.support import (
    at_least,
    consumer_lag,
    drain,
    events,
    fetch_n,
    numbers,
    total_lag,
    until,
    until_equal,
)


async def opened(url: str) -> RedisBroker:
    broker = RedisBroker.from_url(url)
    await broker.connect()
    return broker


# -- URL and connection -------------------------------------------------------


def test_url_parameters_are_read_and_mistakes_name_the_fix() -> None:
    broker = connect("redis://:s3cret@127.0.0.1:6379/2?lease=2.5&trim=0&health_check_interval=3")
    assert isinstance(broker, RedisBroker)
    assert (broker.options.lease, broker.options.trim_interval) == (2.5, 0.0)
    assert broker.options.client_url == ("redis://:s3cret@127.0.0.1:6379/2?health_check_interval=3")
    tls = connect("rediss://cache.internal:6380")
    assert isinstance(tls, RedisBroker)
    assert issubclass(open_pool(tls.options).connection_class, SSLConnection)

    for url, words in [
        ("redis://:s3cret@127.0.0.1:6379?lease=soon", ["lease='soon'", "redis://:***@"]),
        ("redis://127.0.0.1:6379?lease=0", ["lease='0'", "more than 0"]),
        ("redis://127.0.0.1:6379?trim=-1", ["trim='-1'"]),
        ("redis://", ["has no host", "redis://[[user]:password@]host:6379"]),
        ("redis://127.0.0.1:6379/cache", ["redis://127.0.0.1:6379/cache"]),
    ]:
        with pytest.raises(ConfigError) as caught:
            connect(url)
        assert all(word in str(caught.value) for word in words), str(caught.value)
        assert "s3cret" not in str(caught.value)


async def test_an_unreachable_server_is_unavailable_not_a_crash() -> None:
    broker = RedisBroker.from_url(f"redis://:pw@127.0.0.1:{free_port()}/0")
    with pytest.raises(BrokerUnavailable, match=r"redis://:\*\*\*@127\.0\.0\.1:\d+/0"):
        await broker.connect()
    await broker.close()


# -- the data in Redis --------------------------------------------------------


async def test_entries_are_plain_fields_and_other_writers_entries_are_read(
    shared: str, topic: str
) -> None:
    broker = await opened(shared)
    admin = redis.asyncio.Redis.from_url(shared)
    try:
        sent = OutgoingMessage(b'{"n": 1}', key="k-1", headers={"h": "ü"})
        await broker.publish(topic, [sent])
        [(_, fields)] = await admin.xrange(topic)
        assert fields[b"id"] == sent.id.encode() and fields[b"payload"] == b'{"n": 1}'
        assert fields[b"key"] == b"k-1" and json.loads(fields[b"headers"]) == {"h": "ü"}

        # Another tool's entry: no envelope, just a payload.
        foreign_id = await admin.xadd(topic, {"payload": b'{"n": 2}'})
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        ours, theirs = await sub.fetch(10, 1.0)
        assert (ours.id, ours.key, ours.headers) == (sent.id, "k-1", {"h": "ü"})
        assert theirs.id == foreign_id.decode() and theirs.payload == b'{"n": 2}'
        assert theirs.published_at == pytest.approx(int(foreign_id.split(b"-")[0]) / 1000)
        assert theirs.attempt == 1
        await sub.settle([ours, theirs], [], [])
        assert await total_lag(sub) == 0
    finally:
        await admin.aclose()
        await broker.close()


# What other producers write: (label, field, value), each malformed in one way.
MALFORMED = [
    ("published_at=abc", b"published_at", b"abc"),
    ("headers=not json", b"headers", b"not json"),
    ("headers=[1,2]", b"headers", b"[1,2]"),
    ('headers={"a":1}', b"headers", b'{"a":1}'),
    ("key=\\xff", b"key", b"\xff"),
    ("id=\\xff", b"id", b"\xff"),
    ("attempts=x", b"attempts", b"x"),
]


async def test_malformed_metadata_is_read_with_defaults_a_warning_and_no_stop(
    shared: str, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = await opened(shared)
    admin = redis.asyncio.Redis.from_url(shared)
    try:
        written = {}
        for label, name, value in MALFORMED:
            fields = {b"id": label.encode(), b"published_at": b"1700000000.25"}
            fields[b"payload"] = json.dumps({"malformed": label}).encode()
            fields[name] = value
            written[label] = await admin.xadd(topic, fields)
        retry = f"{topic}:retry:billing"  # a retry entry another tool wrote
        await admin.xadd(
            retry, {"id": "r-1", "payload": b'{"malformed": "retry"}', "attempts": "x"}
        )
        await broker.publish(topic, events(100))

        sub = await broker.subscribe(topic, "billing", prefetch=200)
        got = await fetch_n(sub, 108, within=5)
        odd = {json.loads(m.payload)["malformed"]: m for m in got if b"malformed" in m.payload}
        assert sorted(numbers([m for m in got if b"malformed" not in m.payload])) == list(
            range(100)
        )
        entry_time = int(written["published_at=abc"].split(b"-")[0]) / 1000
        assert odd["published_at=abc"].published_at == entry_time
        assert odd["headers=not json"].headers == {} and odd["headers=[1,2]"].headers == {}
        assert odd['headers={"a":1}'].headers == {"a": "1"}
        assert odd["key=\\xff"].key == "\\xff" and odd["id=\\xff"].id == "\\xff"
        assert odd["attempts=x"].attempt == 1
        assert (odd["retry"].id, odd["retry"].attempt) == ("r-1", 1)

        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for _, name, value in MALFORMED:
            shown = f"{name.decode()}={value.decode(errors='backslashreplace')!r}"
            assert any(topic in w and shown in w for w in warnings), (shown, warnings)
        await sub.settle(got, [], [])
        assert await total_lag(sub) == 0
    finally:
        await admin.aclose()
        await broker.close()


async def test_dead_letters_of_any_shape_are_listed(shared: str, topic: str) -> None:
    broker = await opened(shared)
    admin = redis.asyncio.Redis.from_url(shared)
    dlq = f"{topic}:dlq:billing"
    try:
        await admin.xadd(dlq, {"id": "m-1", "payload": b"{}", "headers": b'{"a":1,"b":[2]}'})
        odd = await admin.xadd(
            dlq,
            {
                "id": b"\xff",
                "key": b"\xfe",
                "payload": b"\x00",
                "headers": b"not json",
                "attempts": b"x",
                "error": b"\xff",
                "failed_at": b"soon",
            },
        )
        letters = await (await broker.dead_letters(topic, "billing")).list()
        assert [(x.message_id, x.key, x.headers, x.attempts) for x in letters] == [
            ("\\xff", "\\xfe", {}, 0),
            ("m-1", None, {"a": 1, "b": [2]}, 0),
        ]
        assert letters[0].failed_at == int(odd.split(b"-")[0]) / 1000
    finally:
        await admin.aclose()
        await broker.close()


async def test_waiting_on_an_idle_topic_stays_within_the_socket_timeout(
    shared: str, topic: str
) -> None:
    broker = await opened(f"{shared}?socket_timeout=0.3")
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        started = time.monotonic()
        assert await sub.fetch(10, 1.0) == []
        assert 0.9 <= time.monotonic() - started < 2.0
        await broker.publish(topic, events(1))
        assert numbers(await sub.fetch(10, 1.0)) == [0]
    finally:
        await broker.close()


async def test_a_delivery_whose_reply_was_lost_comes_back_after_the_lease(
    shared: str, topic: str
) -> None:
    broker = await opened(f"{shared}?lease=0.5")
    admin = redis.asyncio.Redis.from_url(shared)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        await broker.publish(topic, events(3))
        # Redis delivers two entries to this member, and the reply never
        # reaches it (a cut connection, a cancelled fetch): it must not keep
        # them alive forever just because they are pending under its name.
        await admin.xreadgroup("billing", sub.consumer, {topic: ">"}, count=2)
        [third] = await sub.fetch(10, 1.0)
        assert numbers([third]) == [2]

        started = time.monotonic()
        lost: list[Message] = []
        while len(lost) < 2 and time.monotonic() - started < 5:
            lost += await sub.fetch(10, 0.2)  # also keeps `third` alive meanwhile
        assert sorted(numbers(lost)) == [0, 1] and {m.attempt for m in lost} == {2}
        assert time.monotonic() - started >= 0.3
        await sub.settle([third, *lost], [], [])
        assert await total_lag(sub) == 0
    finally:
        await admin.aclose()
        await broker.close()


async def test_close_releases_and_leaves_the_group(shared: str, topic: str) -> None:
    broker = await opened(shared)
    admin = redis.asyncio.Redis.from_url(shared)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        await broker.publish(topic, events(300))
        held = await sub.fetch(50, 1.0)  # and 50 more are already delivered, unseen
        assert len(held) == 50
        consumers = await admin.xinfo_consumers(topic, "billing")
        assert [c["name"] for c in consumers] == [sub.consumer.encode()]

        await sub.close()

        assert await admin.xinfo_consumers(topic, "billing") == []
        again = await broker.subscribe(topic, "billing", prefetch=300)
        redelivered = await drain(again)
        assert sorted(numbers(redelivered)) == list(range(300))
        assert {m.attempt for m in redelivered} == {1}
    finally:
        await admin.aclose()
        await broker.close()


async def test_deleted_keys_are_recreated_and_consuming_goes_on(shared: str, topic: str) -> None:
    broker = await opened(shared)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        await broker.publish(topic, events(2))
        assert numbers(await drain(sub)) == [0, 1]
        await delete_keys(shared, topic)  # FLUSHDB, a failover to an empty replica, ...

        await broker.publish(topic, events(2, start=2))
        assert numbers(await drain(sub)) == [2, 3]
    finally:
        await broker.close()


async def test_trimming_drops_only_what_every_group_acked(shared: str, topic: str) -> None:
    broker = await opened(f"{shared}?trim=0")
    admin = redis.asyncio.Redis.from_url(shared)
    try:
        done = await broker.subscribe(topic, "done", prefetch=1000)
        behind = await broker.subscribe(topic, "behind", prefetch=1000)
        await broker.publish(topic, events(1000))
        assert len(await drain(done)) == 1000
        first = await behind.fetch(600, 1.0)
        assert numbers(first) == list(range(600))
        kept = first[250]
        await behind.settle(first[:250] + first[251:], [], [])  # all but #250

        assert await behind.trim() > 0
        remaining = [json.loads(f[b"payload"])["n"] for _, f in await admin.xrange(topic)]
        assert 250 in remaining and remaining == sorted(remaining)
        assert set(range(250, 1000)) <= set(remaining), "an unacked or undelivered entry went"
        assert len(remaining) < 1000

        assert numbers(await drain(behind)) == list(range(600, 1000))
        await behind.settle([kept], [], [])
        await behind.trim()
        assert await admin.xlen(topic) < 100  # whole 100-entry nodes go: ~ trimming
    finally:
        await admin.aclose()
        await broker.close()


# -- the running consumer -----------------------------------------------------------


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


# -- members and takeovers ------------------------------------------------------------


def took_over(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]


async def test_a_member_back_under_its_name_takes_back_at_once_what_it_held(
    shared: str, topic: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    gone = await opened(f"redis://127.0.0.1:{proxy.port}/0?lease=30")
    back = await opened(f"{shared}?lease=30")
    try:
        crashed = await gone.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        await back.publish(topic, events(8))
        assert numbers(await crashed.fetch(5, 1.0)) == [0, 1, 2, 3, 4]
        proxy.pause()
        proxy.cut()  # the process died: nothing released, the lease is 30s

        started = time.monotonic()
        again = await back.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        got = await fetch_n(again, 8, within=1.0)
        took = time.monotonic() - started
        assert sorted(numbers(got)) == list(range(8)), f"{len(got)} back within {took:.2f}s"
        assert {n: m.attempt for n, m in zip(numbers(got), got, strict=True)} == {
            0: 2, 1: 2, 2: 2, 3: 2, 4: 2, 5: 1, 6: 1, 7: 1  # a crash counts
        }  # fmt: skip
        assert took < 1.0 and again.taken_over == 5
        [line] = took_over(caplog)
        assert f"member web-1.charge took over 5 message(s) of {topic}/billing held by " in line
        assert "web-1.charge, which stopped calling" in line
        await again.settle(got, [], [])
        assert await total_lag(again) == 0
    finally:
        await back.close()
        await gone.close()


async def test_a_takeover_after_the_lease_is_counted_and_logged_once(
    shared: str, topic: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    gone = await opened(f"redis://127.0.0.1:{proxy.port}/0?lease=1")
    alive = await opened(f"{shared}?lease=1")
    try:
        crashed = await gone.subscribe(topic, "billing", prefetch=10, member="web-3.charge")
        other = await alive.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        await alive.publish(topic, events(6))
        assert numbers(await crashed.fetch(10, 1.0)) == list(range(6))
        proxy.pause()
        proxy.cut()

        got = await fetch_n(other, 6, within=5)
        assert sorted(numbers(got)) == list(range(6)) and {m.attempt for m in got} == {2}
        assert other.taken_over == 6
        [line] = took_over(caplog)
        assert (
            f"member web-1.charge took over 6 message(s) of {topic}/billing held by "
            "web-3.charge, which stopped calling " in line
        )
        await other.settle(got, [], [])
        assert await fetch_n(other, 1, within=1.5) == [] and other.taken_over == 6
    finally:
        await alive.close()
        await gone.close()


async def test_what_a_member_only_buffered_comes_back_uncounted_under_its_name(
    shared: str, topic: str, proxy: TcpProxy
) -> None:
    broker = await opened(f"redis://127.0.0.1:{proxy.port}/0?lease=30")
    admin = redis.asyncio.Redis.from_url(shared)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        for n in (0, 1):  # retries, read with the topic in one XREADGROUP
            payload = json.dumps({"n": n}).encode()
            await admin.xadd(f"{topic}:retry:billing", {"id": f"r{n}", "payload": payload})
        await broker.publish(topic, events(2, start=2))
        handed = await sub.fetch(2, 1.0)  # and the topic's two wait in the subscription
        assert numbers(handed) == [0, 1]
        proxy.pause()
        proxy.cut()
        await sub.close()  # cannot release: the server is out of reach
        proxy.resume()

        again = await broker.subscribe(topic, "billing", prefetch=10, member="web-1.charge")
        got = await fetch_n(again, 4, within=1.0)
        attempts = {n: m.attempt for n, m in zip(numbers(got), got, strict=True)}
        assert attempts == {0: 2, 1: 2, 2: 1, 3: 1}  # handed out counts, buffered does not
        await again.settle(got, [], [])
    finally:
        await admin.aclose()
        await broker.close()


# -- refused credentials ------------------------------------------------------------


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


# -- several processes ------------------------------------------------------------


@pytest.mark.slow
async def test_three_processes_share_a_group_and_handle_each_message_once(
    shared: str, topic: str, tmp_path: Path
) -> None:
    logs = [tmp_path / f"consumer-{i}.log" for i in range(3)]
    processes = [spawn(f"{shared}?lease=30", topic, log, sleep=0.004) for log in logs]
    try:
        await until(lambda: ready(logs), within=30)
        await asyncio.sleep(0.5)  # connected and subscribed
        publisher = await opened(shared)
        await publisher.publish(topic, events(3000))
        await publisher.close()
        await until(lambda: sum(len(ends(log)) for log in logs) >= 3000, within=60)
        await asyncio.sleep(0.3)
    finally:
        stop(processes)

    handled = [n for log in logs for n, _ in ends(log)]
    assert sorted(handled) == list(range(3000)), "a message was lost or handled twice"
    assert all(ends(log) for log in logs), "a process got no work"
