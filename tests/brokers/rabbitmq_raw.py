"""RabbitMQ as other applications write it: frames written by hand through aiormq's connection.

aiormq's ``basic_publish`` fills in a message id when there is none and pamqp
encodes only well-formed values, so :func:`publish_frames` marshals the
frames itself (pamqp) and puts them on the channel's write queue: a message
may have no id, and placeholder bytes may be swapped for bytes pamqp would
refuse to write (a message id or header name that is not UTF-8, a timestamp
no calendar has), as a producer in another language can send them.
:data:`MALFORMED` is one message per way to get millstream's metadata wrong.
"""

from __future__ import annotations

import datetime
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from millstream.brokers.rabbitmq.topology import declare_topic
from millstream.brokers.rabbitmq.wire import Names

__all__ = ["MALFORMED", "Raw", "publish_frames", "publish_malformed", "publish_raw"]

_PLACED = datetime.datetime.fromtimestamp(1234567890, tz=datetime.UTC)


@dataclass(frozen=True)
class Raw:
    """One message another producer writes: its malformed ``field`` shows as ``value``."""

    field: str
    value: str
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    replace: dict[bytes, bytes] = field(default_factory=dict)
    """Marshalled bytes to swap for others of the same length."""


def _not_utf8(field: str, name: str, placeholder: str) -> Raw:
    """Header ``name`` a long string whose bytes are not UTF-8 (pamqp writes only UTF-8)."""
    bad = b"\xff" * len(placeholder)
    return Raw(field, r"\xff", {name: placeholder}, replace={placeholder.encode(): bad})


MALFORMED = [
    Raw("ms-attempt", "'abc'", {"ms-attempt": "abc"}),
    Raw("ms-attempt", "-3", {"ms-attempt": -3}),
    Raw("ms-attempt", "2.5", {"ms-attempt": 2.5}),
    Raw("x-delivery-count", "'abc'", {"x-delivery-count": "abc"}),
    Raw("ms-published-at", "'abc'", {"ms-published-at": "abc"}),
    _not_utf8("ms-published-at", "ms-published-at", "PUBLISHED-PLACE"),
    _not_utf8("ms-key", "ms-key", "KEY-PLACE"),
    Raw("ms-key", "{'a': 1}", {"ms-key": {"a": 1}}),
    _not_utf8("trace", "trace", "TRACE-PLACE"),
    Raw("trace", "{'b': 2}", {"trace": {"b": 2}}),
    Raw(
        "message_id",
        r"\xff",
        properties={"message_id": "ID-PLACE"},
        replace={b"ID-PLACE": b"\xff" * 8},
    ),
    Raw("header name", r"\xff", {"NAME-PLACE": "v"}, replace={b"NAME-PLACE": b"\xff" * 10}),
    Raw(
        "timestamp",
        "18446744073709551615",
        properties={"timestamp": _PLACED},
        replace={struct.pack(">Q", 1234567890): b"\xff" * 8},
    ),
]


async def publish_malformed(url: str, exchange: str) -> list[tuple[str, str, bytes]]:
    """Every message of :data:`MALFORMED`; returns (field, value, payload) of each."""
    sent = []
    for n, raw in enumerate(MALFORMED):
        payload = json.dumps({"malformed": f"{raw.field}={raw.value}", "n": n}).encode()
        sent.append((raw.field, raw.value, payload))
    await publish_frames(
        url,
        exchange,
        [
            (payload, Basic.Properties(headers=raw.headers or None, **raw.properties), raw.replace)
            for (_, _, payload), raw in zip(sent, MALFORMED, strict=True)
        ],
    )
    return sent


async def publish_frames(
    url: str,
    exchange: str,
    messages: list[tuple[bytes, Basic.Properties, dict[bytes, bytes]]],
    queue_type: str = "quorum",
) -> None:
    """Publish (body, properties, bytes to swap) to topic ``exchange`` (declared first, as
    millstream declares it with ``queue_type``), frames written by hand."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=False)
        await declare_topic(channel, Names(exchange, ""), queue_type)
        for body, properties, replace in messages:
            frames = [
                Basic.Publish(exchange=exchange, routing_key=""),
                ContentHeader(body_size=len(body), properties=properties),
                ContentBody(body),
            ]
            payload = ChannelFrame.marshall(channel.number, frames).payload
            for placeholder, bad in replace.items():
                assert len(placeholder) == len(bad) and payload.count(placeholder) == 1
                payload = payload.replace(placeholder, bad)
            await channel.write_queue.put(ChannelFrame(payload=payload, should_close=False))
        # RabbitMQ handles a channel's frames in order: once this is answered,
        # every publish before it was routed.
        await channel.basic_qos(prefetch_count=0)
    finally:
        await connection.close()


async def publish_raw(url: str, exchange: str, payload: bytes) -> None:
    """A message with no properties at all, not even a message id."""
    await publish_frames(url, exchange, [(payload, Basic.Properties(), {})])
