"""The NATS JetStream adapter in the contract suite: the shared server at 127.0.0.1:4222.

Each connection goes through its own TCP proxy, so one can be cut (a network
drop) or crashed (cut and never let back in) while the others carry on. The
consumers' ``ack_wait`` is the suite's lease, so a crashed member's messages
come back after it.
"""

from __future__ import annotations

from pathlib import Path

from millstream.brokers.base import Broker
from tests.conformance.conftest import LEASE, BrokerFactory, proxied
from tests.conftest import require_service
from tests.proxy import TcpProxy

HOST, PORT = "127.0.0.1", 4222


def factory(tmp_path: Path) -> BrokerFactory:
    require_service("NATS", HOST, PORT)
    from millstream.brokers.nats import NatsBroker
    from tests.brokers.nats_server import delete_streams

    def make(proxy: TcpProxy) -> Broker:
        return NatsBroker.from_url(f"nats://127.0.0.1:{proxy.port}?lease={LEASE:g}")

    async def drop(topic: str) -> None:
        await delete_streams(f"nats://{HOST}:{PORT}", topic)

    return proxied("nats", (HOST, PORT), make, drop, redelivery_after_crash=LEASE)
