"""A NATS broker opened and connected, and fetching until enough came, for NATS test files."""

from __future__ import annotations

import time

from millstream import Message
from millstream.brokers.nats.broker import NatsBroker, NatsSubscription


async def opened(url: str) -> NatsBroker:
    broker = NatsBroker.from_url(url)
    await broker.connect()
    return broker


async def fetch_until(sub: NatsSubscription, count: int, within: float) -> list[Message]:
    taken: list[Message] = []
    deadline = time.monotonic() + within
    while len(taken) < count and time.monotonic() < deadline:
        taken += await sub.fetch(100, 0.2)
    return taken
