"""The NATS JetStream adapter in the contract suite: the shared server at 127.0.0.1:4222.

Each connection goes through its own TCP proxy, so one can be cut (a network
drop) or crashed (cut and never let back in) while the others carry on. The
consumers' ``ack_wait`` is the suite's lease, so a crashed member's messages
come back after it.
"""

from __future__ import annotations

from pathlib import Path

from millstream.brokers.base import Broker
from tests.conformance.conftest import LEASE, BrokerFactory
from tests.conftest import require_service

HOST, PORT = "127.0.0.1", 4222


def factory(tmp_path: Path) -> BrokerFactory:
    require_service("NATS", HOST, PORT)
    from millstream.brokers.nats import NatsBroker
    from tests.brokers.nats_server import delete_streams
    from tests.proxy import TcpProxy

    proxies: dict[int, TcpProxy] = {}

    def open_() -> Broker:
        proxy = TcpProxy(HOST, PORT).start()
        broker = NatsBroker.from_url(f"nats://127.0.0.1:{proxy.port}?lease={LEASE:g}")
        proxies[id(broker)] = proxy
        return broker

    def crash(broker: Broker) -> None:
        proxies[id(broker)].pause()
        proxies[id(broker)].cut()

    def cut(broker: Broker) -> None:
        proxies[id(broker)].cut()

    async def cleanup(topic: str) -> None:
        for proxy in proxies.values():
            proxy.close()
        await delete_streams(f"nats://{HOST}:{PORT}", topic)

    return BrokerFactory("nats", open_, crash, cut, redelivery_after_crash=LEASE, cleanup=cleanup)
