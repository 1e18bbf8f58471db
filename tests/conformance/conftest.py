"""The brokers the contract suite runs against, each behind one small factory.

A factory opens connections to one broker (two connections stand for two
processes), can make a connection die without releasing anything (a crash),
and can cut it (a network drop the supervisor must recover from). An adapter
joins the suite by adding a factory here; the tests do not change.

The fault suite (``test_faults.py``) needs more of a broker, each an optional
hook; a broker without one cannot take that fault and its test skips, saying
so (Watermill's capability flags): ``blackhole``/``heal`` (a silent
partition), ``publish_malformed`` (another producer's bad metadata, through
the raw client), ``publish_raw`` (a foreign message with no millstream
metadata at all), ``process_url`` (a URL child processes consume from, for
SIGKILL tests) and ``durable_server`` (a private server with durable storage
that the test may kill -9 and restart).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from millstream.brokers.base import Broker
from millstream.brokers.memory.broker import MemoryBroker, MemoryHub
from tests.conftest import require_service
from tests.proxy import TcpProxy

if TYPE_CHECKING:
    from tests.brokers.server_process import ServerProcess

LEASE = 1.0  # seconds a crashed member's messages stay held, where the broker uses leases


@dataclass(frozen=True)
class Malformed:
    """A message another producer wrote with metadata ``field`` set to ``value``.

    ``payload`` is what it carries; a consumer either handles it (the field
    ignored, a default in its place) or dead-letters it with a reason naming
    the field and the value.
    """

    field: str
    value: str
    payload: bytes


@dataclass
class BrokerFactory:
    name: str
    open: Callable[[], Broker]
    crash: Callable[[Broker], None]
    cut: Callable[[Broker], None]
    redelivery_after_crash: float = LEASE
    opened: list[Broker] = field(default_factory=list)
    cleanup: Callable[[str], Awaitable[None]] | None = None
    """Run after the brokers are closed, with the test's topic: drop what the test left."""
    blackhole: Callable[[Broker], None] | None = None
    """Drop the connection's traffic silently (no reset) until ``heal``."""
    heal: Callable[[Broker], None] | None = None
    publish_malformed: Callable[[str], Awaitable[list[Malformed]]] | None = None
    """Publish to the topic, through the raw client, one message per kind of metadata
    the broker carries, each malformed in one way; returns what was sent."""
    publish_raw: Callable[[str, bytes], Awaitable[None]] | None = None
    """Publish a payload to the topic through the raw client, with none of millstream's
    metadata (no message id): what a producer that is not millstream writes."""
    process_url: str | None = None
    """A URL that child processes consume from (straight to the broker, no proxy)."""
    durable_server: Callable[[Path], tuple[ServerProcess, str]] | None = None
    """A private server with durable storage (not started) and the URL an app uses on it."""
    restart_recovery: float = 5.0
    """Seconds a member killed and restarted under its name may take to finish what it
    held (process start included): well under a lease, which is what it waits without."""

    async def connect(self) -> Broker:
        broker = self.open()
        await broker.connect()
        self.opened.append(broker)
        return broker


def _memory(tmp_path: Path) -> BrokerFactory:
    hub = MemoryHub(lease=LEASE)

    def crash(broker: Broker) -> None:
        # The process died: nothing is released, the lease runs out.
        assert isinstance(broker, MemoryBroker)
        broker.abandon()

    def cut(broker: Broker) -> None:
        assert isinstance(broker, MemoryBroker)
        broker.cut()

    return BrokerFactory("memory", lambda: MemoryBroker(hub), crash, cut)


def _sqlite(tmp_path: Path) -> BrokerFactory:
    import asyncio

    from millstream.brokers.sqlite.broker import SqliteBroker
    from tests.brokers import sqlite_raw

    path = tmp_path / "broker.db"
    url = f"sqlite:///{path}?lease={LEASE}"

    async def publish_malformed(topic: str) -> list[Malformed]:
        sent = await asyncio.to_thread(sqlite_raw.malformed, path, topic)
        return [Malformed(case.field, case.shown, payload) for case, payload in sent]

    async def publish_raw(topic: str, payload: bytes) -> None:
        await asyncio.to_thread(sqlite_raw.foreign, path, topic, payload)

    def crash(broker: Broker) -> None:
        assert isinstance(broker, SqliteBroker)
        broker.cut()

    def cut(broker: Broker) -> None:
        assert isinstance(broker, SqliteBroker)
        broker.cut()

    return BrokerFactory(
        "sqlite",
        lambda: SqliteBroker.from_url(url),
        crash,
        cut,
        publish_malformed=publish_malformed,
        publish_raw=publish_raw,
        process_url=f"sqlite:///{path}",
    )


def proxied(
    name: str,
    address: tuple[str, int],
    make: Callable[[TcpProxy], Broker],
    drop: Callable[[str], Awaitable[None]],
    *,
    redelivery_after_crash: float = LEASE,
    process_url: str | None = None,
) -> BrokerFactory:
    """A factory whose every connection goes through a TCP proxy of its own to ``address``.

    ``make(proxy)`` builds a broker that connects through ``proxy``.
    So one connection can be cut (a network drop) or crashed (cut and never
    let back in) while the others carry on. Cleanup closes the proxies, then
    ``drop(topic)`` removes what the test left on the broker.
    """
    proxies: dict[int, TcpProxy] = {}

    def open_() -> Broker:
        proxy = TcpProxy(*address).start()
        broker = make(proxy)
        proxies[id(broker)] = proxy
        return broker

    def crash(broker: Broker) -> None:
        proxies[id(broker)].pause()
        proxies[id(broker)].cut()

    def cut(broker: Broker) -> None:
        proxies[id(broker)].cut()

    def blackhole(broker: Broker) -> None:
        proxies[id(broker)].blackhole()

    def heal(broker: Broker) -> None:
        proxies[id(broker)].heal()

    async def cleanup(topic: str) -> None:
        for proxy in proxies.values():
            proxy.close()
        await drop(topic)

    return BrokerFactory(
        name,
        open_,
        crash,
        cut,
        redelivery_after_crash,
        cleanup=cleanup,
        blackhole=blackhole,
        heal=heal,
        process_url=process_url,
    )


def _redis(tmp_path: Path) -> BrokerFactory:
    require_service("Redis", "127.0.0.1", 6379)
    import redis.asyncio

    from millstream.brokers.redis.broker import RedisBroker
    from tests.brokers.redis_server import RedisServer

    def make(proxy: TcpProxy) -> Broker:
        return RedisBroker.from_url(f"redis://127.0.0.1:{proxy.port}/0?lease={LEASE}")

    def raw() -> redis.asyncio.Redis:
        return redis.asyncio.Redis(host="127.0.0.1", port=6379)

    async def drop(topic: str) -> None:
        client = raw()
        try:
            keys = [key async for key in client.scan_iter(match=f"{topic}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    async def publish_malformed(topic: str) -> list[Malformed]:
        sent = []
        client = raw()
        try:
            for name, value in _REDIS_MALFORMED:
                shown = value.decode(errors="backslashreplace")
                payload = json.dumps({"malformed": f"{name}={shown}"}).encode()
                # As millstream writes an entry, but for the one field.
                fields: dict[str, str | bytes] = {"id": uuid.uuid4().hex}
                fields |= {"published_at": "1700000000.5", "payload": payload, name: value}
                await client.xadd(topic, fields)  # type: ignore[arg-type]
                sent.append(Malformed(name, shown, payload))
        finally:
            await client.aclose()
        return sent

    async def publish_raw(topic: str, payload: bytes) -> None:
        client = raw()
        try:
            await client.xadd(topic, {"payload": payload})
        finally:
            await client.aclose()

    def durable_server(directory: Path) -> tuple[ServerProcess, str]:
        server = RedisServer(directory / "redis")  # an append-only file, fsynced always
        return server, f"{server.url}?lease={LEASE}"

    factory = proxied(
        "redis", ("127.0.0.1", 6379), make, drop, process_url="redis://127.0.0.1:6379/0"
    )
    factory.publish_malformed = publish_malformed
    factory.publish_raw = publish_raw
    factory.durable_server = durable_server
    return factory


# What another producer can get wrong in a Redis entry, one field at a time.
_REDIS_MALFORMED: list[tuple[str, bytes]] = [
    ("published_at", b"abc"),
    ("headers", b"not json"),
    ("headers", b"[1,2]"),
    ("headers", b'{"a":1}'),
    ("key", b"\xff"),
    ("id", b"\xff"),
    ("attempts", b"x"),
]


FACTORIES: dict[str, Callable[[Path], BrokerFactory]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
}

# Further adapters bring their factory in a module of their own,
# ``tests/conformance/factory_<name>.py``, exposing ``factory(tmp_path)``.
for _module in sorted(Path(__file__).parent.glob("factory_*.py")):
    _name = _module.stem.removeprefix("factory_")
    FACTORIES[_name] = importlib.import_module(f"tests.conformance.{_module.stem}").factory


@pytest.fixture(params=list(FACTORIES))
async def brokers(
    request: pytest.FixtureRequest, tmp_path: Path, topic: str
) -> AsyncIterator[BrokerFactory]:
    factory = FACTORIES[request.param](tmp_path)
    yield factory
    for broker in factory.opened:
        # A crashed or cut connection may refuse to close cleanly.
        with contextlib.suppress(Exception):
            await broker.close()
    if factory.cleanup is not None:
        await factory.cleanup(topic)


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
