"""Fixtures the cache test files share: the shared Redis, a fresh service, a proxy, buses.

The Redis bus runs against the shared Redis at 127.0.0.1:6379, each test on the
channel of a service named by a fresh uuid (pub/sub leaves no keys behind), with
a TCP proxy in between where the network has to break.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from millstream.cache.redis_bus import RedisBus
from tests.conftest import require_service
from tests.proxy import TcpProxy

SHARED = "redis://127.0.0.1:6379/0"


@pytest.fixture
def shared() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return SHARED


@pytest.fixture
def service() -> str:
    return f"test-cache-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def proxy(shared: str) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 6379) as running:
        yield running


@pytest.fixture
async def buses() -> AsyncIterator[list[RedisBus]]:
    """Buses a test opens; all closed afterwards."""
    opened: list[RedisBus] = []
    yield opened
    for bus in opened:
        await bus.close()
