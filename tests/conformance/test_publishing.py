"""Publishing from handlers against each broker: what a consumer returns reaches the next one."""

from __future__ import annotations

import json
import time
from pathlib import Path

from millstream import Message, Millstream, RetryPolicy, Transaction
from tests.conformance.factory import BrokerFactory, group_of
from tests.support import until

COUNT = 200


def with_outbox(brokers: BrokerFactory, tmp_path: Path) -> Millstream:
    """An app on the broker with a store whose outbox relay looks every 50 ms."""
    return Millstream(
        broker=brokers.open(),
        poll_timeout=0.2,
        store_url=f"sqlite:///{tmp_path}/state.db",
        outbox_poll_interval=0.05,
    )


async def test_a_handlers_return_value_reaches_the_next_consumer_with_its_key(
    brokers: BrokerFactory, topic: str, tmp_path: Path
) -> None:
    """200 keyed messages on A, read by two consumers with ``publishes=`` B: one publishing
    directly, one through the outbox (``idempotent=True``). A consumer of B gets all 400,
    each with the key of the message it came from."""
    out = f"{topic}-out"
    ms = with_outbox(brokers, tmp_path)
    received: dict[tuple[str, int], str | None] = {}

    @ms.consumer(topic, group=group_of(topic, "direct"), publishes=out, concurrency=4)
    async def direct(event: dict[str, int]) -> dict[str, object]:
        return {"path": "direct", "n": event["n"]}

    @ms.consumer(topic, group=group_of(topic, "outbox"), publishes=out, idempotent=True)
    async def outbox(event: dict[str, int]) -> dict[str, object]:
        return {"path": "outbox", "n": event["n"]}

    @ms.consumer(out, group=group_of(out))
    async def downstream(message: Message) -> None:
        value = json.loads(message.payload)
        received[(value["path"], value["n"])] = message.key

    try:
        async with ms:
            for n in range(COUNT):
                await ms.publish(topic, {"n": n}, key=f"k-{n % 7}")
            await until(lambda: len(received) == 2 * COUNT, within=30)
    finally:
        if brokers.cleanup is not None:
            await brokers.cleanup(out)

    expected = {(path, n): f"k-{n % 7}" for path in ("direct", "outbox") for n in range(COUNT)}
    assert received == expected
    assert ms.consumers["direct"].stats.dead == 0 and ms.consumers["outbox"].stats.dead == 0


DELAY = 1.5  # seconds: long enough that early would show, short enough for the suite


async def test_a_delayed_publish_reaches_every_group_after_its_delay_and_blocks_nothing(
    brokers: BrokerFactory, topic: str, tmp_path: Path
) -> None:
    """One message published with ``delay=``, one with ``tx.publish(..., delay=)`` through
    the outbox, then one at once. Two groups each get the at-once message first and the
    delayed ones no earlier than their delay (and not much later); waiting was no
    attempt, and a delayed message that fails is retried as attempt 2."""
    late = f"{topic}-later"
    ms = with_outbox(brokers, tmp_path)
    seen: dict[str, list[tuple[str, int, float]]] = {"one": [], "two": []}
    failed: set[str] = set()

    def record(group: str, message: Message) -> None:
        name = json.loads(message.payload)["name"]
        seen[group].append((name, message.attempt, time.time()))

    @ms.consumer(topic, group=group_of(topic, "one"), retry=RetryPolicy(backoff=0.1))
    async def one(message: Message) -> None:
        record("one", message)
        if json.loads(message.payload)["name"] == "delayed" and "delayed" not in failed:
            failed.add("delayed")
            raise RuntimeError("fails once")

    @ms.consumer(topic, group=group_of(topic, "two"))
    async def two(message: Message) -> None:
        record("two", message)

    @ms.consumer(late, group=group_of(late), idempotent=True)
    async def schedule(event: dict[str, str], tx: Transaction) -> None:
        tx.publish(topic, {"name": event["name"]}, delay=DELAY)

    try:
        async with ms:
            await ms.publish(late, {"name": "outbox"})
            sent = time.time()
            await ms.publish(topic, {"name": "delayed"}, delay=DELAY)
            await ms.publish(topic, {"name": "at-once"})
            await until(lambda: len(seen["one"]) == 4 and len(seen["two"]) == 3, within=20)
    finally:
        if brokers.cleanup is not None:
            await brokers.cleanup(late)

    for group, got in seen.items():
        names = [name for name, _, _ in got]
        assert names[0] == "at-once", (group, got)
        at = {(name, attempt): when for name, attempt, when in got}
        assert set(at) >= {("at-once", 1), ("delayed", 1), ("outbox", 1)}, (group, got)
        for name in ("delayed", "outbox"):
            waited = at[name, 1] - sent
            assert DELAY - 0.01 <= waited <= DELAY + 2.5, (group, name, waited)
    assert ("delayed", 2) in {(name, attempt) for name, attempt, _ in seen["one"]}
    assert ms.consumers["one"].stats.dead == 0
