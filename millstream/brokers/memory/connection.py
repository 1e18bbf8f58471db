"""One client's connection to a memory hub: its URL, and whether it is up.

The memory broker has no network and no wire format; what is left of a
connection is what the contract's tests need of one: it can be cut (held
messages go back, counted) and opened again, and a subscription made before
a cut cannot be used after it.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from millstream.brokers.memory.hub import DEFAULT_LEASE, MemoryHub
from millstream.errors import BrokerUnavailable
from millstream.urls import query_seconds

__all__ = ["MemoryConnection", "parse_url"]


def parse_url(url: str) -> float:
    """The lease of ``memory://?lease=SECONDS`` (default 30), or ``ConfigError``."""
    query = parse_qs(urlsplit(url).query)
    if "lease" not in query:
        return DEFAULT_LEASE
    return query_seconds(url, "lease", query["lease"][0], example="memory://?lease=30")


class MemoryConnection:
    """A client's connection to a :class:`MemoryHub`, counted in epochs: each ``open``
    after a cut begins a new one, and what was made in an old one is unusable."""

    def __init__(self, url: str, hub: MemoryHub) -> None:
        self.url = url
        self.hub = hub
        self._connected = False
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """How many times the connection was opened."""
        return self._epoch

    def open(self) -> None:
        """Connect, unless connected."""
        if not self._connected:
            self._connected = True
            self._epoch += 1

    def drop(self) -> None:
        """Disconnect (closed, cut or abandoned) until the next ``open``."""
        self._connected = False

    def check(self, epoch: int | None = None) -> None:
        """``BrokerUnavailable`` unless connected (in ``epoch``, if given)."""
        if not self._connected or (epoch is not None and epoch != self._epoch):
            raise BrokerUnavailable(f"{self.url}: not connected")
