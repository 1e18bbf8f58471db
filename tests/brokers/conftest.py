"""Fixtures the broker test files share: the shared server, a fresh topic, a proxy to it.

Each fixture serves the broker its test file is named after
(``test_<broker>.py`` and ``test_<broker>_<concern>.py``, such as ``test_redis_members.py``):

- ``shared``: the URL of that broker's shared server; the test skips when the
  server does not answer (fails, with ``MILLSTREAM_REQUIRE_BROKERS=1``).
- ``tansu``: the session's Tansu, Kafka's shared server (tests/brokers/tansu.py).
- ``topic``: a topic no other test uses; what the test left under it is
  deleted afterwards (keys, streams, exchanges and queues, topics).
- ``proxy``: a TCP proxy to the shared server, closed afterwards.
- ``warnings``: ``caplog``, recording the brokers' warnings and above.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

from tests.conftest import require_service
from tests.proxy import TcpProxy

if TYPE_CHECKING:
    from tests.brokers.tansu import Tansu

# broker -> (its name in a skip, host, port, the URL of its shared server)
SHARED = {
    "redis": ("Redis", "127.0.0.1", 6379, "redis://127.0.0.1:6379/0"),
    "nats": ("NATS", "127.0.0.1", 4222, "nats://127.0.0.1:4222"),
    "rabbitmq": ("RabbitMQ", "127.0.0.1", 5672, "amqp://guest:guest@127.0.0.1:5672/"),
}


def broker_of(request: pytest.FixtureRequest) -> str:
    """The broker the requesting test file is named after."""
    broker = request.path.stem.removeprefix("test_").split("_")[0]
    if broker not in {*SHARED, "kafka"}:
        raise LookupError(
            f"{request.path.name} is not named test_<broker>[_<concern>].py for a broker "
            f"with a shared server ({', '.join([*SHARED, 'kafka'])}): "
            "the shared, topic and proxy fixtures do not know which server to use"
        )
    return broker


@pytest.fixture
def tansu() -> Tansu:
    from tests.brokers.tansu import shared_tansu

    return shared_tansu()


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="millstream.brokers")
    return caplog


@pytest.fixture
def shared(request: pytest.FixtureRequest) -> str:
    name, host, port, url = SHARED[broker_of(request)]
    require_service(name, host, port)
    return url


@pytest.fixture
async def topic(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    broker = broker_of(request)
    separator = "." if broker == "nats" else "-"  # a NATS topic is a subject
    name = f"test{separator}{uuid.uuid4().hex[:12]}"
    if broker == "kafka":
        from tests.brokers.kafka_raw import drop_topics

        address = request.getfixturevalue("tansu").address
        yield name
        await drop_topics(address, name)  # and its retry and dead-letter topics
        return
    url = request.getfixturevalue("shared")
    yield name
    if broker == "redis":
        from tests.brokers.redis_server import delete_keys

        await delete_keys(url, name)
    elif broker == "nats":
        from tests.brokers.nats_server import delete_streams

        await delete_streams(url, name)
    else:
        from tests.brokers.rabbitmq_admin import delete_names

        await delete_names(name, ("billing", "shipping"))


@pytest.fixture
def proxy(request: pytest.FixtureRequest) -> Iterator[TcpProxy]:
    if broker_of(request) == "kafka":
        port = request.getfixturevalue("tansu").port
    else:
        request.getfixturevalue("shared")
        _, _, port, _ = SHARED[broker_of(request)]
    with TcpProxy("127.0.0.1", port) as running:
        yield running
