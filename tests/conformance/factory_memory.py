"""The memory broker in the conformance suite: one hub per test, in this process.

A crash abandons the connection (nothing is released, the lease runs out);
a cut makes it fail until the supervisor connects again. A memory broker
lives in one process, so nothing that needs another process or a URL of its
own (the command line, member processes, raw producers, servers) applies.
"""

from __future__ import annotations

from pathlib import Path

from millstream.brokers.base import Broker
from millstream.brokers.memory.broker import MemoryBroker, MemoryHub
from tests.conformance.factory import LEASE, BrokerFactory

ONE_PROCESS = "a memory broker lives in one process, out of reach of any other"
LACKS = {
    "process_url": ONE_PROCESS,
    "group_url": ONE_PROCESS,
    "publish_malformed": "its messages are Python objects, with no metadata to get wrong",
    "publish_raw": "its messages are Python objects that only millstream publishes",
    "blackhole": "it has no network connection to go silent",
    "durable_server": "it has no server to kill, and keeps nothing past its process",
    "refusing": "it has no credentials to refuse",
    "unreachable": "it has no server to be out of reach",
    "held_at": "it keeps retries and dead letters in the hub, in this process, where no "
    "other client can look",
}


def factory(tmp_path: Path) -> BrokerFactory:
    hub = MemoryHub(lease=LEASE)
    # A hub's lease is every member's: connections with another lease share a hub of theirs.
    hubs = {LEASE: hub}

    def leased(seconds: float) -> Broker:
        return MemoryBroker(hubs.setdefault(seconds, MemoryHub(lease=seconds)))

    def crash(broker: Broker) -> None:
        assert isinstance(broker, MemoryBroker)
        broker.abandon()

    def cut(broker: Broker) -> None:
        assert isinstance(broker, MemoryBroker)
        broker.cut()

    return BrokerFactory(
        "memory",
        lambda: MemoryBroker(hub),
        crash,
        cut,
        MemoryBroker.capabilities,
        leased=leased,
        says_back=lambda name, topic: "that it held before it stopped without releasing them",
        says_expired=lambda name, topic: f"held by {name}, whose lease of {LEASE:g}s ran out",
        lacks=LACKS,
    )
