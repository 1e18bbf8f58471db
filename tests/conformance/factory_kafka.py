"""The Kafka adapter in the contract suite, against the session's Tansu broker.

Each connection goes through its own TCP proxy (crash = pause + cut, cut =
cut), with the adapter's ``route`` sending the advertised address to that
proxy. Topics have one partition: the suite expects a fetch to return
keyless messages of several publish calls, and messages of several keys, in
publish order, which Kafka promises within a partition only. Malformed and
foreign records are written with aiokafka's own producer
(tests/brokers/kafka_raw.py).
"""

from __future__ import annotations

from pathlib import Path

from millstream.brokers.base import Broker
from millstream.brokers.kafka.broker import KafkaBroker
from tests.brokers import kafka_raw
from tests.brokers.tansu import QUIRKS, shared_tansu, via
from tests.conformance.conftest import BrokerFactory, Malformed, proxied
from tests.proxy import TcpProxy

# The session timeout, then a rebalance: when a crashed member's partitions move.
REDELIVERY = 2.5


def factory(tmp_path: Path) -> BrokerFactory:
    tansu = shared_tansu()
    url = tansu.url(f"partitions=1&{QUIRKS}")

    def make(proxy: TcpProxy) -> Broker:
        return KafkaBroker(url, route=via(proxy))

    async def drop(topic: str) -> None:
        await kafka_raw.drop_topics(tansu.address, topic)

    async def publish_malformed(topic: str) -> list[Malformed]:
        sent = await kafka_raw.publish_malformed(tansu.address, topic)
        return [Malformed(*each) for each in sent]

    async def publish_raw(topic: str, payload: bytes) -> None:
        await kafka_raw.publish_raw(tansu.address, topic, payload)

    built = proxied(
        "kafka",
        ("127.0.0.1", tansu.port),
        make,
        drop,
        redelivery_after_crash=REDELIVERY,
        process_url=url,
    )
    built.publish_malformed = publish_malformed
    built.publish_raw = publish_raw
    return built
