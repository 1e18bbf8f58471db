"""A Redis broker opened and connected, for the Redis broker's test files."""

from __future__ import annotations

from millstream.brokers.redis.broker import RedisBroker


async def opened(url: str) -> RedisBroker:
    broker = RedisBroker.from_url(url)
    await broker.connect()
    return broker
