"""What a consumer is: the declaration ``@ms.consumer(...)`` records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from millstream.errors import ConfigError
from millstream.message import Message
from millstream.retry import RetryPolicy
from millstream.runtime.handler import Handler, HandlerLink, check_handler

__all__ = ["ConsumerSpec", "KeySpec", "key_function"]

KeySpec = str | Callable[[Message], "str | None"] | None


@dataclass(frozen=True)
class ConsumerSpec:
    """One consumer: which topic and group, how to call the handler, how hard to try."""

    name: str
    topic: str
    group: str
    handler: Handler
    concurrency: int = 1
    key: KeySpec = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    prefetch: int | None = None
    max_inflight: int | None = None
    links: tuple[HandlerLink, ...] = ()

    def __post_init__(self) -> None:
        where = f"consumer {self.name!r}"
        if not self.topic:
            raise ConfigError(f"{where}: topic must not be empty")
        if not self.group:
            raise ConfigError(f"{where}: group must not be empty")
        if self.concurrency < 1:
            raise ConfigError(f"{where}: concurrency={self.concurrency} must be at least 1")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"{where}: timeout={self.timeout} must be more than 0 seconds")
        if self.prefetch is not None and self.prefetch < 1:
            raise ConfigError(f"{where}: prefetch={self.prefetch} must be at least 1")
        if self.max_inflight is not None and self.max_inflight < 1:
            raise ConfigError(f"{where}: max_inflight={self.max_inflight} must be at least 1")
        if not (self.key is None or isinstance(self.key, str) or callable(self.key)):
            raise ConfigError(
                f"{where}: key={self.key!r} must be a payload field name, "
                "a callable taking the Message, or None (the key given to publish)"
            )
        check_handler(self.handler)


def _publish_key(message: Message) -> str | None:
    return message.key


def key_function(key: KeySpec) -> Callable[[Message], str | None]:
    """How to read a message's ordering key.

    ``None``: the key given to ``publish``. A string: that field of the JSON
    payload (a payload that is not a JSON object has no key, and its handler
    will report the decoding problem). A callable: its result.
    """
    if key is None:
        return _publish_key
    if callable(key):
        return key
    field_name = key
    loads = orjson.loads

    def from_field(message: Message) -> str | None:
        try:
            value = loads(message.payload)
        except orjson.JSONDecodeError:
            return None
        if isinstance(value, dict):
            found = value.get(field_name)
            return None if found is None else str(found)
        return None

    return from_field
