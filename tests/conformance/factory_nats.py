"""The NATS JetStream adapter in the conformance suite: the shared server at 127.0.0.1:4222.

Each connection goes through its own TCP proxy, so one can be cut (a network
drop), crashed (cut and never let back in) or blackholed (a silent partition)
while the others carry on. The consumers' ``ack_wait`` is the suite's lease,
so a crashed member's messages come back after it. Malformed and foreign
messages are published with the NATS protocol itself (tests/brokers/nats_server.py),
bytes that are not UTF-8 included; private servers (durable, or with users)
are ``nats-server -js`` processes in the test's directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from millstream.brokers.base import Broker
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

HOST, PORT = "127.0.0.1", 4222
URL = f"nats://{HOST}:{PORT}"


def factory(tmp_path: Path) -> BrokerFactory:
    require_service("NATS", HOST, PORT)
    from millstream.brokers.nats.broker import NatsBroker
    from tests.brokers import nats_server

    def leased(proxy: TcpProxy, seconds: float) -> Broker:
        return NatsBroker.from_url(f"nats://127.0.0.1:{proxy.port}?lease={seconds:g}")

    def make(proxy: TcpProxy) -> Broker:
        return leased(proxy, LEASE)

    async def drop(topic: str) -> None:
        await nats_server.delete_streams(URL, topic)

    async def publish_malformed(topic: str) -> list[Malformed]:
        sent = await nats_server.publish_malformed(URL, topic)
        return [Malformed(field, value, payload) for field, value, payload in sent]

    async def publish_raw(topic: str, payload: bytes) -> None:
        await nats_server.ensure_topic_stream(URL, topic)
        await nats_server.publish_raw(URL, topic, payload)

    async def held_at(subject: str, topic: str, group: str) -> int:
        import nats
        from nats.js.errors import NotFoundError

        client = await nats.connect(URL, allow_reconnect=False)
        try:
            js = client.jsm()
            stream = await js.find_stream_name_by_subject(subject)
            info = await js.stream_info(stream, subjects_filter=subject)
            return sum((info.state.subjects or {}).values())
        except NotFoundError:
            return 0
        finally:
            await client.close()

    def durable_server(directory: Path) -> tuple[ServerProcess, str]:
        server = nats_server.NatsServer(directory / "nats")
        return server, f"{server.url()}?lease={LEASE:g}"

    @contextmanager
    def refusing(directory: Path) -> Iterator[Refusing]:
        users = [{"user": "app", "password": "right"}]
        with nats_server.NatsServer(directory / "nats", users=users) as server:
            yield Refusing(
                server.port, lambda port: f"nats://app:wrong@127.0.0.1:{port}", "nats://app:***@"
            )

    def unreachable(port: int) -> Unreachable:
        return Unreachable(f"nats://u:pw@127.0.0.1:{port}", f"nats://u:***@127.0.0.1:{port}")

    built = proxied("nats", (HOST, PORT), make, drop, NatsBroker.capabilities, leased=leased)
    built.publish_malformed = publish_malformed
    built.publish_raw = publish_raw
    built.process_url = URL
    built.group_url = f"{URL}?lease={LEASE:g}"
    built.durable_server = durable_server
    built.refusing = refusing
    built.back_within = 3.0
    built.says_back = lambda name, topic: (
        f"held by {name} (its predecessor under this name), which stopped calling"
    )
    built.says_expired = lambda name, topic: (
        f"held by member(s) whose lease (ack_wait {LEASE:g}s) ran out"
    )
    # The server redelivers each message as its ack_wait runs out.
    built.expired_logged_once = False
    built.unreachable = unreachable
    built.held_at = held_at
    return built
