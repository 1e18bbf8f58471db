"""The NATS JetStream broker beyond the shared conformance suite, against real servers.

The shared NATS at 127.0.0.1:4222 serves most tests, each on a topic named
by a fresh uuid whose streams it deletes afterwards. Tests that restart a
server or need users and permissions start a private ``nats-server -js``
(tests/brokers/nats_server.py); tests that break the network put a TCP
proxy in between (tests/proxy.py).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from millstream import Message, Millstream, OutgoingMessage
from millstream.brokers import connect
from millstream.brokers.nats.broker import NatsBroker, NatsSubscription
from millstream.brokers.nats.names import Names
from millstream.errors import AuthenticationError, ConfigError
from millstream.runtime import ConsumerState
from tests.brokers.nats_server import NatsServer
from tests.proxy import TcpProxy
from tests.support import drain, events, numbers, total_lag, until


async def opened(url: str) -> NatsBroker:
    broker = NatsBroker.from_url(url)
    await broker.connect()
    return broker


async def gather(subscription: NatsSubscription, count: int, within: float = 5.0) -> list[Message]:
    """Fetch and ack until ``count`` arrived or ``within`` seconds passed."""
    taken: list[Message] = []
    deadline = time.monotonic() + within
    while len(taken) < count and time.monotonic() < deadline:
        batch = await subscription.fetch(100, 0.5)
        await subscription.settle(batch, [], [])
        taken += batch
    return taken


# -- URL, names and connection ------------------------------------------------


def test_url_parameters_are_read_and_mistakes_name_the_fix() -> None:
    broker = connect("nats://app:s3cret@127.0.0.1:4222?lease=2.5&max_ack_pending=500")
    assert isinstance(broker, NatsBroker)
    assert (broker.options.lease, broker.options.max_ack_pending) == (2.5, 500)
    assert broker.options.server == "nats://app:s3cret@127.0.0.1:4222"

    for url, words in [
        ("nats://:s3cret@127.0.0.1:4222?lease=soon", ["lease='soon'", "nats://:***@"]),
        ("nats://127.0.0.1:4222?lease=0", ["lease='0'", "more than 0"]),
        ("nats://127.0.0.1:4222?max_ack_pending=-1", ["max_ack_pending='-1'"]),
        ("nats://127.0.0.1:4222?ack=1", ["unknown parameter 'ack'"]),
        ("nats://", ["has no host", "nats://[user:password@]host:4222"]),
    ]:
        with pytest.raises(ConfigError) as caught:
            connect(url)
        assert all(word in str(caught.value) for word in words), str(caught.value)
        assert "s3cret" not in str(caught.value)


def test_names_are_safe_and_distinct_for_dotted_topics() -> None:
    plain, dotted, underscored = Names("orders", "billing"), Names("a.b", "g"), Names("a_b", "g")
    assert (plain.stream, plain.consumer) == ("MS_orders", "billing")
    assert plain.private == "_ms.MS_orders.billing"
    assert dotted.stream.startswith("MS_a_b_") and underscored.stream == "MS_a_b"
    assert Names("t", "billing.eu").consumer != Names("t", "billing_eu").consumer
    assert Names("t", "a").dead_stream != Names("t", "b").dead_stream


async def test_topics_that_are_not_plain_subjects_are_refused(shared: str) -> None:
    broker = await opened(shared)
    try:
        for bad in ["orders.*", "orders..eu", "orders eu", "_ms.x", ""]:
            with pytest.raises(ConfigError, match="a NATS topic is a subject"):
                await broker.publish(bad, events(1))
    finally:
        await broker.close()


# -- the data in JetStream ------------------------------------------------------


async def test_messages_are_plain_on_the_subject_and_other_publishers_are_read(
    shared: str, topic: str
) -> None:
    broker = await opened(shared)
    client = await nats.connect(shared)
    try:
        sent = OutgoingMessage(b'{"n": 1}', key="k-1", headers={"h": "\u00fc"})
        await broker.publish(topic, [sent])
        raw = await client.jsm().get_msg(Names(topic, "").stream, 1)
        assert raw.subject == topic and raw.data == b'{"n": 1}'
        assert raw.headers is not None and raw.headers["Nats-Msg-Id"] == sent.id

        # Another tool's message: no envelope, just a payload.
        ack = await client.jetstream().publish(topic, b'{"n": 2}')
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        ours, theirs = await sub.fetch(10, 1.0)
        assert (ours.id, ours.key, ours.headers) == (sent.id, "k-1", {"h": "\u00fc"})
        assert theirs.id == f"{Names(topic, '').stream}:{ack.seq}" and theirs.attempt == 1
        assert abs(theirs.published_at - time.time()) < 5
        await sub.settle([ours, theirs], [], [])
        assert await total_lag(sub) == 0

        # A publish retried after a lost acknowledgement is stored once.
        await broker.publish(topic, [sent])
        assert await sub.fetch(10, 0.3) == []
    finally:
        await client.close()
        await broker.close()


async def test_close_releases_what_was_delivered_but_not_yet_fetched(
    shared: str, topic: str
) -> None:
    broker = await opened(shared)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=300)
        await broker.publish(topic, events(300))
        held = await sub.fetch(50, 1.0)
        assert len(held) == 50
        await broker.publish(topic, events(10, start=300))
        # A waiting pull request delivers more than this fetch takes.
        assert len(await sub.fetch(5, 1.0)) == 5

        await sub.close()

        again = await broker.subscribe(topic, "billing", prefetch=300)
        redelivered = await drain(again)
        assert sorted(numbers(redelivered)) == list(range(310))
        assert {m.attempt for m in redelivered} == {1}
        assert await total_lag(again) == 0
    finally:
        await broker.close()


async def test_a_delayed_publish_counts_attempts_right_whenever_a_group_first_sees_it(
    shared: str, topic: str
) -> None:
    """A group reading when it is published (its early delivery ``nak``-ed) and one that
    subscribes only after it came due (its first delivery late): each hands it out as
    attempt 1, never before its time, then as attempt 2 when retried."""
    broker = await opened(shared)
    try:
        early = await broker.subscribe(topic, "early", prefetch=10)
        due = time.time() + 1.0
        await broker.publish(topic, [OutgoingMessage(b"later", deliver_at=due)])
        assert await early.fetch(10, 0.3) == []
        for name in ("early", "late"):
            if name == "late":
                await asyncio.sleep(max(0.0, due - time.time()) + 0.2)
            sub = early if name == "early" else await broker.subscribe(topic, name, prefetch=10)
            [first] = await gather_one(sub)
            assert time.time() >= due and first.attempt == 1, name
            await sub.settle([], [(first, 0.1)], [])
            [again] = await gather_one(sub)
            assert again.attempt == 2, name
            await sub.settle([again], [], [])
            assert await total_lag(sub) == 0, name
    finally:
        await broker.close()


async def gather_one(subscription: NatsSubscription) -> list[Message]:
    """The next message handed out, within five seconds."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if taken := await subscription.fetch(1, 0.5):
            return taken
    return []


async def test_a_deleted_consumer_or_stream_is_recreated_and_consuming_goes_on(
    shared: str, topic: str
) -> None:
    broker = await opened(shared)
    client = await nats.connect(shared)
    try:
        names = Names(topic, "billing")
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        await broker.publish(topic, events(2))
        assert numbers(await drain(sub)) == [0, 1]

        await client.jsm().delete_consumer(names.stream, names.consumer)
        await broker.publish(topic, events(1, start=2))
        assert numbers(await gather(sub, 3)) == [0, 1, 2]  # from the start again

        await client.jsm().delete_stream(names.stream)
        assert await sub.fetch(10, 0.5) == []
        await broker.publish(topic, events(1, start=3))
        assert numbers(await gather(sub, 1)) == [3]
    finally:
        await client.close()
        await broker.close()


# -- the running consumer -----------------------------------------------------------


# -- refused credentials and permissions ---------------------------------------------

USERS: list[dict[str, Any]] = [
    {"user": "app", "password": "right"},
    {
        "user": "reader",
        "password": "pw",
        "permissions": {"publish": {"deny": ["$JS.API.STREAM.CREATE.>"]}},
    },
    {"user": "mute", "password": "pw", "permissions": {"publish": {"deny": ["payments"]}}},
]


async def test_a_wrong_password_is_refused_at_connect_with_the_fix(tmp_path: Path) -> None:
    with NatsServer(tmp_path / "nats", users=USERS) as server:
        broker = NatsBroker.from_url(server.url("app", "wrong"))
        with pytest.raises(AuthenticationError) as caught:
            await broker.connect()
        message = str(caught.value)
        assert f"nats://app:***@127.0.0.1:{server.port}" in message
        assert "refused the credentials" in message and "check the user and password" in message
        assert "wrong" not in message
        await broker.close()


async def test_a_missing_permission_fails_the_consumer_with_the_subject(tmp_path: Path) -> None:
    with (
        NatsServer(tmp_path / "nats", users=USERS) as server,
        TcpProxy("127.0.0.1", server.port) as proxy,
    ):
        ms = Millstream(f"nats://reader:pw@127.0.0.1:{proxy.port}", reconnect_backoff=0.05)

        @ms.consumer("payments", group="billing")
        async def handle(event: dict[str, int]) -> None:
            pass

        started = time.monotonic()
        async with ms:
            consumer = ms.consumers["handle"]
            await until(lambda: consumer.state is ConsumerState.FAILED, within=5)
            assert time.monotonic() - started < 3, "waited for a timeout instead of the refusal"
            attempts = proxy.accepted
            await asyncio.sleep(1.0)
            assert proxy.accepted == attempts, "kept connecting after the refusal"
            error = consumer.stats.last_error or ""
            assert "refused a permission" in error and "$JS.API.STREAM.CREATE.MS_payments" in error

        # With the stream there (made by a user allowed to), the same user consumes.
        admin = await opened(server.url("app", "right"))
        await admin.publish("payments", events(1))
        reader = await opened(server.url("reader", "pw"))
        mute = await opened(server.url("mute", "pw"))
        try:
            sub = await reader.subscribe("payments", "billing", prefetch=10)
            assert numbers(await drain(sub)) == [0]
            # A publish the server drops for a permission fails at once, naming it.
            started = time.monotonic()
            with pytest.raises(AuthenticationError, match="publish to 'payments'"):
                await mute.publish("payments", events(1))
            assert time.monotonic() - started < 2
        finally:
            await mute.close()
            await reader.close()
            await admin.close()
