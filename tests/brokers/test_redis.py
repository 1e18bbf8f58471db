"""The Redis Streams broker's URLs and its data in Redis: fields, foreign entries, leases, trims."""

from __future__ import annotations

import json
import logging
import time

import pytest
import redis.asyncio
from redis.asyncio.connection import SSLConnection

from millstream import Message, OutgoingMessage
from millstream.brokers import connect
from millstream.brokers.redis.broker import RedisBroker
from millstream.brokers.redis.connection import open_pool
from millstream.errors import ConfigError
from tests.brokers.redis_server import delete_keys
from tests.brokers.redis_support import opened
from tests.support import (
    drain,
    events,
    fetch_n,
    numbers,
    total_lag,
)


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
