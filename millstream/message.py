"""The envelope every broker hands to the runtime, and the one it publishes."""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic_core import to_json

__all__ = [
    "HEADER_ATTEMPT",
    "HEADER_DELIVER_AT",
    "HEADER_ERROR",
    "HEADER_ID",
    "HEADER_KEY",
    "HEADER_PUBLISHED_AT",
    "NO_HEADERS",
    "Message",
    "OutgoingMessage",
    "deliver_at",
    "encode",
    "new_message_id",
]

# Header names for brokers that carry the envelope in message headers.
HEADER_ID = "ms-id"
HEADER_KEY = "ms-key"
HEADER_ATTEMPT = "ms-attempt"
HEADER_PUBLISHED_AT = "ms-published-at"
HEADER_ERROR = "ms-error"
HEADER_DELIVER_AT = "ms-deliver-at"

NO_HEADERS: Mapping[str, str] = MappingProxyType({})
"""The headers of a message that arrived without any: shared, read-only, free."""

_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_message_id() -> str:
    """A process-unique, globally improbable-to-collide message id.

    A random per-process prefix plus a counter: as unique as a UUID for our
    purposes and an order of magnitude cheaper, which matters in
    ``publish_batch`` of tens of thousands of messages.
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


@dataclass(slots=True)
class Message:
    """One delivery of a message to a consumer.

    ``id`` is stable across redeliveries (it is what idempotent handlers key
    on); ``attempt`` counts deliveries, starting at 1. ``receipt`` is the
    broker's own handle for settling this delivery and means nothing outside
    the subscription that produced it. ``headers`` are the application
    headers it arrived with, read-only (copy them with ``dict()`` to publish
    onwards).
    """

    id: str
    topic: str
    payload: bytes
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: NO_HEADERS)
    attempt: int = 1
    published_at: float = 0.0
    partition: int | None = None
    offset: int | None = None
    receipt: Any = None
    deliver_at: float = 0.0
    """Not to be handled before this Unix time (a delayed publish); 0 for at once.

    Set by the network adapters, whose subscriptions hold back (see
    ``brokers.base.early``) a message delivered before it."""


@dataclass(slots=True)
class OutgoingMessage:
    """A message on its way to the broker. ``id`` is assigned when omitted."""

    payload: bytes
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    id: str = field(default_factory=new_message_id)
    published_at: float = field(default_factory=time.time)
    deliver_at: float | None = None
    """Unix time before which no consumer gets it (``publish(..., delay=)``); ``None``: at once."""


def deliver_at(delay: float | None, now: float | None = None) -> float | None:
    """The Unix time a message published now with ``delay`` seconds is due; ``None`` for none.

    Raises ``ValueError`` naming the value when ``delay`` is not a finite
    number of seconds, 0 or more.
    """
    if delay is None:
        return None
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay < math.inf:
        raise ValueError(
            f"delay={delay!r}: expected a finite number of seconds, 0 or more "
            "(e.g. delay=30 for half a minute)"
        )
    if delay == 0:
        return None
    return (time.time() if now is None else now) + delay


def encode(value: Any) -> bytes:
    """The bytes published for ``value``: bytes as they are, str as UTF-8, anything else as JSON.

    Pydantic models, dataclasses, dicts and lists serialise with pydantic's
    JSON encoder, which is what consumers decode with.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return to_json(value)
