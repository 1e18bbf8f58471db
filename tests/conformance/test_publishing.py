"""Publishing from handlers against each broker: what a consumer returns reaches the next one."""

from __future__ import annotations

import json
from pathlib import Path

from millstream import Message, Millstream
from tests.conformance.factory import BrokerFactory, group_of
from tests.support import until

COUNT = 200


async def test_a_handlers_return_value_reaches_the_next_consumer_with_its_key(
    brokers: BrokerFactory, topic: str, tmp_path: Path
) -> None:
    """200 keyed messages on A, read by two consumers with ``publishes=`` B: one publishing
    directly, one through the outbox (``idempotent=True``). A consumer of B gets all 400,
    each with the key of the message it came from."""
    out = f"{topic}-out"
    ms = Millstream(
        broker=brokers.open(),
        poll_timeout=0.2,
        store_url=f"sqlite:///{tmp_path}/state.db",
        outbox_poll_interval=0.05,
    )
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
