"""RabbitMQ in the contract suite: the shared node at 127.0.0.1:5672, one proxy per connection.

Crash: the proxy stops letting anyone in and kills the connection, so the
member never releases anything; RabbitMQ returns its unacked deliveries at
once (counted). Cut: the proxy kills the connection; the supervisor
reconnects through it.
"""

from __future__ import annotations

from pathlib import Path

from millstream.brokers.base import Broker
from tests.conformance.conftest import BrokerFactory, proxied
from tests.conftest import require_service
from tests.proxy import TcpProxy


def factory(tmp_path: Path) -> BrokerFactory:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    from millstream.brokers.rabbitmq import RabbitMqBroker
    from tests.brokers.rabbitmq_admin import delete_declared

    opened: list[RabbitMqBroker] = []

    def make(proxy: TcpProxy) -> Broker:
        broker = RabbitMqBroker.from_url(f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        opened.append(broker)
        return broker

    async def drop(topic: str) -> None:
        await delete_declared(opened)

    return proxied("rabbitmq", ("127.0.0.1", 5672), make, drop, redelivery_after_crash=1.0)
