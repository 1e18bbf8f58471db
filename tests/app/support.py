"""A Millstream app on the memory broker, for the app's test files."""

from __future__ import annotations

from millstream import Millstream
from millstream.brokers.memory.broker import MemoryBroker, MemoryHub


def app(hub: MemoryHub | None = None, **settings: object) -> Millstream:
    return Millstream(broker=MemoryBroker(hub or MemoryHub()), **settings)
