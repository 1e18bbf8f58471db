"""NATS messages other producers and tools wrote: malformed headers, foreign ids, dead letters."""

from __future__ import annotations

import time

import nats
import pytest

from millstream import Message, Millstream
from millstream.brokers.nats.names import Names
from millstream.runtime import ConsumerState
from tests.brokers.nats_server import publish_malformed, publish_raw
from tests.brokers.nats_support import fetch_until, opened
from tests.support import consumer_lag, events, until, until_equal


async def test_malformed_headers_are_read_with_defaults_and_the_consumer_goes_on(
    shared: str, topic: str, warnings: pytest.LogCaptureFixture
) -> None:
    ms = Millstream(f"{shared}?lease=1", poll_timeout=0.2)
    seen: list[Message] = []

    @ms.consumer(topic, group="billing")
    async def handle(message: Message) -> None:
        seen.append(message)

    sent = await publish_malformed(shared, topic)
    publisher = await opened(shared)
    try:
        async with ms:
            await publisher.publish(topic, events(100))
            await until(lambda: len(seen) >= len(sent) + 100, within=10)
            await until_equal(lambda: consumer_lag(ms), 0)
            assert ms.consumers["handle"].state is ConsumerState.RUNNING
    finally:
        await publisher.close()

    by_payload = {m.payload: m for m in seen}
    assert len(seen) == len(sent) + 100, "a message came back: it was never acknowledged"
    assert all(payload in by_payload for _, _, payload in sent)
    for field, value, payload in sent:
        message = by_payload[payload]
        assert message.attempt == 1 and abs(message.published_at - time.time()) < 30, field
        if field in ("ms-attempt", "ms-published-at"):
            logged = [r.getMessage() for r in warnings.records]
            assert any(topic in line and field in line and repr(value) in line for line in logged)
    # Bytes that are not UTF-8 stay distinct (and readable) in the id and the key.
    assert by_payload[sent[3][2]].id == "id-\\xff\\xfe"
    assert by_payload[sent[4][2]].id == "id-\\xfe\\xff"
    assert by_payload[sent[5][2]].key == "key-\\xff"


async def test_foreign_and_undecodable_ids_stay_the_same_through_retry_release_and_dead_letters(
    shared: str, topic: str
) -> None:
    broker = await opened(shared)
    client = await nats.connect(shared)
    try:
        sub = await broker.subscribe(topic, "billing", prefetch=10)
        await client.jetstream().publish(topic, b'{"n": 0}')  # no headers at all
        await publish_raw(shared, topic, b'{"n": 1}', [(b"ms-id", b"\xff"), (b"h", b"\xc3\xbc")])
        await publish_raw(shared, topic, b'{"n": 2}', [(b"ms-id", b"\xfe")])
        first = await fetch_until(sub, 3, within=3)
        ids = [m.id for m in first]
        assert ids == [f"{Names(topic, '').stream}:1", "\\xff", "\\xfe"]
        assert first[1].headers == {"h": "\u00fc"}

        await sub.settle([], [(first[0], 0.0)], [(first[1], "FatalError: no")])
        retried = await fetch_until(sub, 1, within=3)
        assert [(m.id, m.attempt) for m in retried] == [(ids[0], 2)]
        await sub.close()  # releases the retried one and the third

        sub = await broker.subscribe(topic, "billing", prefetch=10)
        released = await fetch_until(sub, 2, within=3)
        assert sorted((m.id, m.attempt) for m in released) == [(ids[0], 2), (ids[2], 1)]
        await sub.settle(released, [], [])

        dead = await broker.dead_letters(topic, "billing")
        [letter] = await dead.list()
        assert (letter.message_id, letter.headers, letter.attempts) == (ids[1], {"h": "\u00fc"}, 1)
        assert await dead.replay() == 1
        [replayed] = await fetch_until(sub, 1, within=3)
        assert (replayed.id, replayed.attempt, dict(replayed.headers)) == (ids[1], 1, {"h": "ü"})
    finally:
        await client.close()
        await broker.close()


async def test_dead_letters_another_tool_wrote_are_listed_with_defaults(
    shared: str, topic: str
) -> None:
    broker = await opened(shared)
    names = Names(topic, "billing")
    try:
        await broker.ensure_dead_stream(names)
        await publish_raw(
            shared,
            names.dead,
            b"{}",
            [
                (b"ms-attempt", b"abc"),
                (b"ms-error", b"not json"),
                (b"ms-failed-at", b"yesterday"),
                (b"ms-id", b"id-\xff"),
                (b"h", b"\xc3\xbc"),
            ],
        )
        [letter] = await (await broker.dead_letters(topic, "billing")).list()
        assert (letter.message_id, letter.attempts, letter.error) == ("id-\\xff", 0, "not json")
        assert (letter.failed_at, letter.headers) == (0.0, {"h": "\u00fc"})
    finally:
        await broker.close()
