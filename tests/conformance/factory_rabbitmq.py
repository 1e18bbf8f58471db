"""RabbitMQ in the contract suite: the shared node at 127.0.0.1:5672, one proxy per connection.

Crash: the proxy stops letting anyone in and kills the connection, so the
member never releases anything; RabbitMQ returns its unacked deliveries at
once (counted). Cut: the proxy kills the connection; the supervisor
reconnects through it.
"""

from __future__ import annotations

from pathlib import Path

from millstream.brokers.base import Broker
from tests.conformance.conftest import BrokerFactory
from tests.conftest import require_service


def factory(tmp_path: Path) -> BrokerFactory:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    from millstream.brokers.rabbitmq import RabbitMqBroker
    from tests.brokers.rabbitmq_admin import delete_declared
    from tests.proxy import TcpProxy

    proxies: dict[int, TcpProxy] = {}
    opened: list[RabbitMqBroker] = []

    def open_() -> Broker:
        proxy = TcpProxy("127.0.0.1", 5672).start()
        broker = RabbitMqBroker.from_url(f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        proxies[id(broker)] = proxy
        opened.append(broker)
        return broker

    def crash(broker: Broker) -> None:
        proxies[id(broker)].pause()
        proxies[id(broker)].cut()

    def cut(broker: Broker) -> None:
        proxies[id(broker)].cut()

    async def cleanup(topic: str) -> None:
        for proxy in proxies.values():
            proxy.close()
        await delete_declared(opened)

    return BrokerFactory("rabbitmq", open_, crash, cut, redelivery_after_crash=1.0, cleanup=cleanup)
