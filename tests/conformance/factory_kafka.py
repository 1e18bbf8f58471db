"""The Kafka adapter in the conformance suite, against the session's Tansu broker.

Each connection goes through its own TCP proxy (crash = pause + cut, cut =
cut), with the adapter's ``route`` sending the advertised address to that
proxy. Topics have one partition: the suite expects a fetch to return
keyless messages of several publish calls, and messages of several keys, in
publish order, which Kafka promises within a partition only. Member
processes sharing a group get six partitions, so each has a share. Malformed
and foreign records are written with aiokafka's own producer
(tests/brokers/kafka_raw.py); the wrong password is refused by a private
Tansu with SCRAM.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from millstream.brokers.base import Broker
from millstream.brokers.kafka.broker import KafkaBroker
from millstream.brokers.kafka.offsets import GroupOffsets
from tests.brokers import kafka_raw
from tests.brokers.tansu import QUIRKS, Tansu, shared_tansu, via
from tests.conformance.factory import BrokerFactory, Malformed, Refusing, Unreachable, proxied
from tests.proxy import TcpProxy

# The session timeout, then a rebalance: when a crashed member's partitions move.
REDELIVERY = 2.5
MEMBER_PARTITIONS = 6


def factory(tmp_path: Path) -> BrokerFactory:
    tansu = shared_tansu()
    url = tansu.url(f"partitions=1&{QUIRKS}")

    def make(proxy: TcpProxy) -> Broker:
        return KafkaBroker(url, route=via(proxy))

    def leased(proxy: TcpProxy, seconds: float) -> Broker:
        # A crashed member's partitions stay its own until its session times out.
        return KafkaBroker(f"{url}&session_timeout={seconds:g}", route=via(proxy))

    def unreachable(port: int) -> Unreachable:
        return Unreachable(
            f"kafka://u:pw@127.0.0.1:{port}?{QUIRKS}", f"kafka://u:***@127.0.0.1:{port}"
        )

    async def drop(topic: str) -> None:
        await kafka_raw.drop_topics(tansu.address, topic)

    async def publish_malformed(topic: str) -> list[Malformed]:
        sent = await kafka_raw.publish_malformed(tansu.address, topic)
        return [Malformed(*each) for each in sent]

    async def publish_raw(topic: str, payload: bytes) -> None:
        await kafka_raw.publish_raw(tansu.address, topic, payload)

    async def group_lag(publisher: Broker, topic: str, group: str) -> int:
        # Read from outside the group: Tansu can take long to let a new member
        # into a group whose member was killed.
        assert isinstance(publisher, KafkaBroker)
        partitions = [TopicPartition(topic, p) for p in range(MEMBER_PARTITIONS)]
        committed = await GroupOffsets(publisher.producer().client, group).fetch(partitions)
        reader = AIOKafkaConsumer(bootstrap_servers=tansu.address)
        await reader.start()
        try:
            last = await reader.end_offsets(partitions)
        finally:
            await reader.stop()
        return sum(last[p] - committed.get(p, 0) for p in partitions)

    async def held_at(name: str, topic: str, group: str) -> int:
        reader = AIOKafkaConsumer(bootstrap_servers=tansu.address)
        await reader.start()
        try:
            if name not in await reader.topics():
                return 0
            partitions = [TopicPartition(name, p) for p in reader.partitions_for_topic(name) or ()]
            first = await reader.beginning_offsets(partitions)
            last = await reader.end_offsets(partitions)
        finally:
            await reader.stop()
        return sum(last[p] - first[p] for p in partitions)

    @contextmanager
    def refusing(directory: Path) -> Iterator[Refusing]:
        # Tansu refuses SCRAM credentials it does not know inside the exchange.
        with Tansu(authentication=True) as server:
            yield Refusing(
                server.port,
                lambda port: f"kafka://alice:wrong@127.0.0.1:{port}?{QUIRKS}",
                "kafka://alice:***@",
            )

    built = proxied(
        "kafka",
        ("127.0.0.1", tansu.port),
        make,
        drop,
        KafkaBroker.capabilities,
        redelivery_after_crash=REDELIVERY,
        leased=leased,
    )
    built.publish_malformed = publish_malformed
    built.publish_raw = publish_raw
    built.process_url = url
    built.group_url = tansu.url(f"partitions={MEMBER_PARTITIONS}&{QUIRKS}")
    built.members_join = 4.0  # all three joined and rebalanced
    built.survivors_keep_their_share = False
    built.group_lag = group_lag
    built.back_after_cut = 10.0
    built.refusing = refusing
    # Measured: the member back under its name has its partitions after about half
    # the session timeout (5s of 10s), the time Tansu takes to let it in.
    built.back_within = 8.0
    # A member joining the group moves the partitions at once: the crashed member,
    # silent, is left out of the rebalance.
    built.crash_holds = False
    built.says_back = built.says_expired = lambda name, topic: (
        f"({topic}[0] offsets "  # the partition and offsets it took
    )
    built.unreachable = unreachable
    built.held_at = held_at
    built.lacks = {
        "durable_server": "Tansu, the Kafka the tests run, keeps data in memory only in this "
        "build: a kill -9 loses it by design"
    }
    return built
