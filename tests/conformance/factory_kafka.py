"""The Kafka adapter in the contract suite, against the session's Tansu broker.

Each connection goes through its own TCP proxy (crash = pause + cut, cut =
cut), with the adapter's ``route`` sending the advertised address to that
proxy. Topics have one partition: the suite expects a fetch to return
keyless messages of several publish calls, and messages of several keys, in
publish order, which Kafka promises within a partition only.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from millstream.brokers.base import Broker
from millstream.brokers.kafka import KafkaBroker
from tests.brokers.tansu import QUIRKS, shared_tansu, via
from tests.conformance.conftest import BrokerFactory, proxied
from tests.proxy import TcpProxy

# The session timeout, then a rebalance: when a crashed member's partitions move.
REDELIVERY = 2.5


def factory(tmp_path: Path) -> BrokerFactory:
    tansu = shared_tansu()
    url = tansu.url(f"partitions=1&{QUIRKS}")

    def make(proxy: TcpProxy) -> Broker:
        return KafkaBroker(url, route=via(proxy))

    async def drop(topic: str) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=tansu.address)
        with contextlib.suppress(Exception):
            await admin.start()
            names = [t for t in await admin.list_topics() if t.startswith(topic)]
            if names:
                await admin.delete_topics(names)
        with contextlib.suppress(Exception):
            await admin.close()

    return proxied(
        "kafka", ("127.0.0.1", tansu.port), make, drop, redelivery_after_crash=REDELIVERY
    )
