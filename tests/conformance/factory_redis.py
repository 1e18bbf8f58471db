"""Redis Streams in the conformance suite: the shared server at 127.0.0.1:6379.

Each connection goes through its own TCP proxy (crash = pause + cut, cut =
cut, blackhole = a silent partition). Malformed and foreign entries are
written with redis-py, as another tool writes them; private servers
(durable, or with a password) are ``redis-server`` processes in the test's
directory (tests/brokers/redis_server.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from millstream.brokers.base import Broker
from tests.brokers.redis_server import RedisServer, delete_keys
from tests.brokers.server_process import ServerProcess
from tests.conformance.factory import (
    LEASE,
    BrokerFactory,
    Malformed,
    Refusing,
    Unreachable,
    proxied,
)
from tests.conftest import require_service
from tests.proxy import TcpProxy

URL = "redis://127.0.0.1:6379/0"

# What another producer can get wrong in a Redis entry, one field at a time.
MALFORMED: list[tuple[str, bytes]] = [
    ("published_at", b"abc"),
    ("headers", b"not json"),
    ("headers", b"[1,2]"),
    ("headers", b'{"a":1}'),
    ("key", b"\xff"),
    ("id", b"\xff"),
    ("attempts", b"x"),
]


def factory(tmp_path: Path) -> BrokerFactory:
    require_service("Redis", "127.0.0.1", 6379)
    import redis.asyncio

    from millstream.brokers.redis.broker import RedisBroker

    def leased(proxy: TcpProxy, seconds: float) -> Broker:
        return RedisBroker.from_url(f"redis://127.0.0.1:{proxy.port}/0?lease={seconds:g}")

    def make(proxy: TcpProxy) -> Broker:
        return leased(proxy, LEASE)

    async def drop(topic: str) -> None:
        await delete_keys(URL, topic)

    async def publish_malformed(topic: str) -> list[Malformed]:
        sent = []
        client = redis.asyncio.Redis.from_url(URL)
        try:
            for name, value in MALFORMED:
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
        client = redis.asyncio.Redis.from_url(URL)
        try:
            await client.xadd(topic, {"payload": payload})
        finally:
            await client.aclose()

    async def held_at(key: str, topic: str, group: str) -> int:
        client = redis.asyncio.Redis.from_url(URL)
        try:
            kind = await client.type(key)
            if kind == b"stream":
                return int(await client.xlen(key))
            if kind == b"zset":
                return int(await client.zcard(key))
            assert kind == b"none", f"{key!r} is a {kind!r}"
            return 0
        finally:
            await client.aclose()

    def durable_server(directory: Path) -> tuple[ServerProcess, str]:
        server = RedisServer(directory / "redis")  # an append-only file, fsynced always
        return server, f"{server.url}?lease={LEASE:g}"

    @contextmanager
    def refusing(directory: Path) -> Iterator[Refusing]:
        with RedisServer(directory / "redis", password="right") as server:
            yield Refusing(
                server.port, lambda port: f"redis://:wrong@127.0.0.1:{port}/0", "redis://:***@"
            )

    def unreachable(port: int) -> Unreachable:
        return Unreachable(f"redis://:pw@127.0.0.1:{port}/0", f"redis://:***@127.0.0.1:{port}/0")

    built = proxied(
        "redis", ("127.0.0.1", 6379), make, drop, RedisBroker.capabilities, leased=leased
    )
    built.publish_malformed = publish_malformed
    built.publish_raw = publish_raw
    built.process_url = URL
    built.group_url = f"{URL}?lease={LEASE:g}"
    built.durable_server = durable_server
    built.refusing = refusing
    built.says_back = built.says_expired = lambda name, topic: (
        f"held by {name}, which stopped calling "
    )
    built.unreachable = unreachable
    built.held_at = held_at
    return built
