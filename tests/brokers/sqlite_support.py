"""Helpers the SQLite broker test files share: brokers opened on a file, messages in and out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from millstream.brokers.sqlite.broker import SqliteBroker, SqliteSubscription
from millstream.message import Message, OutgoingMessage

TOPIC = "payments"


def url_of(path: Path, **params: object) -> str:
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[SqliteBroker]:
    broker = SqliteBroker.from_url(url)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()


def outgoing(*payloads: str, key: str | None = None) -> list[OutgoingMessage]:
    return [OutgoingMessage(payload=p.encode(), key=key) for p in payloads]


def payloads(messages: list[Message]) -> list[str]:
    return [m.payload.decode() for m in messages]


async def drain(subscription: SqliteSubscription, *, timeout: float = 0.2) -> list[Message]:
    """Fetch until a fetch comes back empty, acking everything."""
    taken: list[Message] = []
    while batch := await subscription.fetch(100, timeout):
        await subscription.settle(batch, [], [])
        taken.extend(batch)
    return taken
