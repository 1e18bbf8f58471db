"""Broker adapters, chosen by URL scheme with :func:`connect`."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from millstream.brokers.base import (
    Broker,
    Capabilities,
    DeadLetter,
    DeadLetterQueue,
    Lag,
    Layout,
    Place,
    Subscription,
)
from millstream.errors import ConfigError
from millstream.urls import redact

__all__ = [
    "Broker",
    "Capabilities",
    "DeadLetter",
    "DeadLetterQueue",
    "Lag",
    "Layout",
    "Place",
    "Subscription",
    "connect",
    "redact",
]

# scheme -> (module, factory attribute, pip extra). Imported lazily so that a
# user of one broker never needs another's client library installed.
_ADAPTERS: dict[str, tuple[str, str, str]] = {
    "memory": ("millstream.brokers.memory.broker", "MemoryBroker", ""),
    "sqlite": ("millstream.brokers.sqlite.broker", "SqliteBroker", ""),
    "redis": ("millstream.brokers.redis.broker", "RedisBroker", "redis"),
    "rediss": ("millstream.brokers.redis.broker", "RedisBroker", "redis"),
    "amqp": ("millstream.brokers.rabbitmq.broker", "RabbitMqBroker", "rabbitmq"),
    "amqps": ("millstream.brokers.rabbitmq.broker", "RabbitMqBroker", "rabbitmq"),
    "nats": ("millstream.brokers.nats.broker", "NatsBroker", "nats"),
    "kafka": ("millstream.brokers.kafka.broker", "KafkaBroker", "kafka"),
}

_EXPECTED = (
    "sqlite:///./.millstream/broker.db, memory://, redis://host:6379, "
    "amqp://user:pass@host:5672/vhost, nats://host:4222 or kafka://host:9092"
)


def connect(url: str) -> Broker:
    """The broker adapter for ``url``, not yet connected (call ``await broker.connect()``).

    Raises ``ConfigError`` naming the URL and the accepted forms when the
    scheme is unknown or its adapter is not installed.
    """
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise ConfigError(f"broker URL {url!r} has no scheme; expected one of {_EXPECTED}")
    if "://" not in url:
        raise ConfigError(
            f"broker URL {url!r} lacks '//' after '{scheme}:'; expected one of {_EXPECTED}"
        )
    entry = _ADAPTERS.get(scheme)
    if entry is None:
        raise ConfigError(
            f"broker URL {url!r} has an unsupported scheme {scheme!r}; expected one of {_EXPECTED}"
        )
    module_name, attribute, extra = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"broker URL {url!r} needs the {scheme} adapter, which could not be imported "
            f"({exc}); install millstream with the matching extra, e.g. "
            f"pip install 'millstream[{extra}]'"
        ) from exc
    factory = getattr(module, attribute)
    broker: Broker = factory.from_url(url)
    return broker
