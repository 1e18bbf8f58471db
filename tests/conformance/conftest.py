"""The brokers the contract suite runs against, each behind one small factory.

A factory opens connections to one broker (two connections stand for two
processes), can make a connection die without releasing anything (a crash),
and can cut it (a network drop the supervisor must recover from). An adapter
joins the suite by adding a factory here; the tests do not change.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from millstream.brokers.base import Broker
from millstream.brokers.memory import MemoryBroker, MemoryHub

LEASE = 1.0  # seconds a crashed member's messages stay held, where the broker uses leases


@dataclass
class BrokerFactory:
    name: str
    open: Callable[[], Broker]
    crash: Callable[[Broker], None]
    cut: Callable[[Broker], None]
    redelivery_after_crash: float = LEASE
    opened: list[Broker] = field(default_factory=list)

    async def connect(self) -> Broker:
        broker = self.open()
        await broker.connect()
        self.opened.append(broker)
        return broker


def _memory(tmp_path: Path) -> BrokerFactory:
    hub = MemoryHub(lease=LEASE)

    def crash(broker: Broker) -> None:
        # The process died: nothing is released, the lease runs out.
        assert isinstance(broker, MemoryBroker)
        broker.abandon()

    def cut(broker: Broker) -> None:
        assert isinstance(broker, MemoryBroker)
        broker.cut()

    return BrokerFactory("memory", lambda: MemoryBroker(hub), crash, cut)


def _sqlite(tmp_path: Path) -> BrokerFactory:
    from millstream.brokers.sqlite import SqliteBroker

    url = f"sqlite:///{tmp_path}/broker.db?lease={LEASE}"

    def crash(broker: Broker) -> None:
        assert isinstance(broker, SqliteBroker)
        broker.cut()

    def cut(broker: Broker) -> None:
        assert isinstance(broker, SqliteBroker)
        broker.cut()

    return BrokerFactory("sqlite", lambda: SqliteBroker.from_url(url), crash, cut)


FACTORIES: dict[str, Callable[[Path], BrokerFactory]] = {
    "memory": _memory,
    "sqlite": _sqlite,
}


@pytest.fixture(params=list(FACTORIES))
async def brokers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BrokerFactory]:
    factory = FACTORIES[request.param](tmp_path)
    yield factory
    for broker in factory.opened:
        # A crashed or cut connection may refuse to close cleanly.
        with contextlib.suppress(Exception):
            await broker.close()


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
