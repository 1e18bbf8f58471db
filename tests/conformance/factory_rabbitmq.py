"""RabbitMQ in the conformance suite: the shared node at 127.0.0.1:5672, one proxy per connection.

Crash: the proxy stops letting anyone in and kills the connection, so the
member never releases anything; RabbitMQ returns its unacked deliveries at
once (counted): it has no leases. Cut: the proxy kills the connection; the supervisor
reconnects through it. Malformed and foreign messages are written frame by
frame (tests/brokers/rabbitmq_raw.py). The node is shared, so nothing here
restarts it; the wrong password is refused by the node itself.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import aiormq

from millstream.brokers.base import Broker
from tests.conformance.factory import (
    GROUP,
    BrokerFactory,
    Malformed,
    Refusing,
    Unreachable,
    group_of,
    proxied,
)
from tests.conftest import require_service
from tests.proxy import TcpProxy


def factory(tmp_path: Path) -> BrokerFactory:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    from millstream.brokers.rabbitmq.broker import RabbitMqBroker
    from tests.brokers import rabbitmq_raw
    from tests.brokers.rabbitmq_admin import SHARED, delete_declared, delete_names

    opened: list[RabbitMqBroker] = []

    def make(proxy: TcpProxy) -> Broker:
        broker = RabbitMqBroker.from_url(f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
        opened.append(broker)
        return broker

    async def drop(topic: str) -> None:
        await delete_declared(opened)
        # What raw publishers, child processes and the command line declared.
        await delete_names(topic, [GROUP, group_of(topic)])

    async def publish_malformed(topic: str) -> list[Malformed]:
        return [Malformed(*sent) for sent in await rabbitmq_raw.publish_malformed(SHARED, topic)]

    async def publish_raw(topic: str, payload: bytes) -> None:
        await rabbitmq_raw.publish_raw(SHARED, topic, payload)

    async def held_at(queue: str, topic: str, group: str) -> int:
        connection = await aiormq.connect(SHARED)
        try:
            channel = await connection.channel()
            declared = await channel.queue_declare(queue, passive=True)
            return int(declared.message_count or 0)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0
        finally:
            await connection.close()

    refused = Refusing(
        5672, lambda port: f"amqp://guest:wrong@127.0.0.1:{port}/", "amqp://guest:***@"
    )
    built = proxied(
        "rabbitmq",
        ("127.0.0.1", 5672),
        make,
        drop,
        RabbitMqBroker.capabilities,
        redelivery_after_crash=1.0,
    )
    built.publish_malformed = publish_malformed
    built.publish_raw = publish_raw
    built.process_url = built.group_url = SHARED
    built.members_join = 1.0
    built.refusing = lambda directory: nullcontext(refused)
    # The node returns what a member held when its connection goes, as deliveries that
    # reach members a fetch at a time, each fetch warning for its own.
    built.crash_holds = built.back_logged_once = built.expired_logged_once = False
    built.says_back = built.says_expired = lambda name, topic: (
        "that RabbitMQ returned from a member that went without acking them"
    )
    built.held_at = held_at
    built.unreachable = lambda port: Unreachable(
        f"amqp://guest:pw@127.0.0.1:{port}/", f"amqp://guest:***@127.0.0.1:{port}/"
    )
    built.lacks = {
        "durable_server": "the tests share one RabbitMQ node, which none may kill under the others"
    }
    return built
