"""RabbitMQ in the contract suite: the shared node at 127.0.0.1:5672, one proxy per connection.

Crash: the proxy stops letting anyone in and kills the connection, so the
member never releases anything; RabbitMQ returns its unacked deliveries at
once (counted). Cut: the proxy kills the connection; the supervisor
reconnects through it. Malformed and foreign messages are published byte for
byte (``tests/brokers/rabbitmq_raw.py``), so they can carry what aio-pika
would refuse to send. No ``durable_server``: the shared node must not be
restarted.
"""

from __future__ import annotations

from pathlib import Path

from millstream.brokers.base import Broker
from tests.conformance.conftest import BrokerFactory, Malformed, proxied
from tests.conftest import require_service
from tests.proxy import TcpProxy

HOST, PORT = "127.0.0.1", 5672


def factory(tmp_path: Path) -> BrokerFactory:
    require_service("RabbitMQ", HOST, PORT)
    from pamqp.commands import Basic

    from millstream.brokers.rabbitmq import RabbitMqBroker
    from tests.brokers.rabbitmq_admin import delete_declared, delete_names
    from tests.brokers.rabbitmq_raw import RawPublish, malformed, publish

    opened: list[RabbitMqBroker] = []

    def make(proxy: TcpProxy) -> Broker:
        broker = RabbitMqBroker.from_url(f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        opened.append(broker)
        return broker

    async def drop(topic: str) -> None:
        await delete_declared(opened)
        await delete_names(topic, ["g", "billing"])  # what child processes declared

    async def publish_malformed(topic: str) -> list[Malformed]:
        sent = await malformed(HOST, PORT, topic)
        return [Malformed(case.field, case.shown, case.message().body) for case in sent]

    async def publish_raw(topic: str, payload: bytes) -> None:
        await publish(HOST, PORT, topic, [RawPublish(payload, Basic.Properties())])

    brokers = proxied(
        "rabbitmq",
        (HOST, PORT),
        make,
        drop,
        redelivery_after_crash=1.0,
        process_url=f"amqp://guest:guest@{HOST}:{PORT}/",
    )
    brokers.publish_malformed = publish_malformed
    brokers.publish_raw = publish_raw
    return brokers
