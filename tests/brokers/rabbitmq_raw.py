"""Publishing to RabbitMQ as another program would, byte for byte, with pamqp's frames alone.

aio-pika and aiormq refuse to send what millstream must survive: a short
string (message id, header name, routing key) that is not UTF-8. This
publisher marshals frames with pamqp, then swaps placeholder bytes for the
bytes a test wants (of the same length, so every length field stays right),
and waits for RabbitMQ's publisher confirm of each message.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import struct
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from pamqp import commands, frame, header
from pamqp.body import ContentBody
from pamqp.commands import Basic

__all__ = ["MALFORMED", "RawCase", "RawPublish", "malformed", "publish"]

_PROTOCOL = b"AMQP\x00\x00\x09\x01"
_CHANNEL = 1

F = TypeVar("F")


@dataclass(frozen=True)
class RawPublish:
    """One message: ``body`` with ``properties``; in the marshalled frames, each
    ``(placeholder, replacement)`` of ``swap`` is replaced (same length)."""

    body: bytes
    properties: Basic.Properties
    routing_key: str = ""
    swap: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True)
class RawCase:
    """Another producer's message with ``field`` malformed (as ``shown``): its properties,
    byte swaps in its frames, and routing key."""

    field: str
    shown: str
    properties: dict[str, Any] = field(default_factory=dict)
    swap: tuple[tuple[bytes, bytes], ...] = ()
    routing_key: str = ""

    def message(self) -> RawPublish:
        """The message, its payload naming the case: ``{"malformed": "<field>=<shown>"}``."""
        payload = json.dumps({"malformed": f"{self.field}={self.shown}"}).encode()
        return RawPublish(payload, Basic.Properties(**self.properties), self.routing_key, self.swap)


_SOME_TIME = datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC)
_STAMP = struct.pack(">Q", int(_SOME_TIME.timestamp()))
_NEVER = ((_STAMP, struct.pack(">Q", 2**63 - 1)),)  # a timestamp no datetime has


_LONG_FF = ((b"S\0\0\0\x01@", b"S\0\0\0\x01\xff"),)  # the long string "@" as byte 0xff


def _name(placeholder: str, raw: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """Swap a short string (``placeholder`` with its length byte) for ``raw``."""
    return ((bytes([len(raw)]) + placeholder.encode(), bytes([len(raw)]) + raw),)


MALFORMED = [
    RawCase("message_id", "b'\\xff\\xfe'", {"message_id": "@@"}, _name("@@", b"\xff\xfe")),
    RawCase("correlation_id", "b'\\xff\\xff'", {"correlation_id": "@@"}, _name("@@", b"\xff\xff")),
    RawCase("header name", "b'\\xfe\\xff'", {"headers": {"@@": "v"}}, _name("@@", b"\xfe\xff")),
    RawCase("routing key", "b'\\xff\\xff'", {}, _name("@@", b"\xff\xff"), routing_key="@@"),
    RawCase("timestamp", "2**63-1", {"timestamp": _SOME_TIME}, _NEVER),
    RawCase("headers", "{'sent': <2**63-1>}", {"headers": {"sent": _SOME_TIME}}, _NEVER),
    RawCase("ms-key", "b'k\\xff'", {"headers": {"ms-key": "k@"}}, ((b"k@", b"k\xff"),)),
    RawCase("ms-key", "42", {"headers": {"ms-key": 42}}),
    RawCase("ms-published-at", "'yesterday'", {"headers": {"ms-published-at": "yesterday"}}),
    RawCase("ms-published-at", "{'a': 1}", {"headers": {"ms-published-at": {"a": 1}}}),
    RawCase("ms-attempt", "'abc'", {"headers": {"ms-attempt": "abc"}}),
    RawCase("ms-attempt", "-3", {"headers": {"ms-attempt": -3}}),
    RawCase("ms-attempt", "True", {"headers": {"ms-attempt": True}}),
    RawCase("x-delivery-count", "'abc'", {"headers": {"x-delivery-count": "abc"}}),
    RawCase("x-delivery-count", "7", {"headers": {"x-delivery-count": 7}}),
    RawCase("ms-id", "42", {"headers": {"ms-id": 42}}),
    RawCase("headers", "{'n': 7}", {"headers": {"n": 7}}),
    RawCase("headers", "{'t': {'a': [1, None]}}", {"headers": {"t": {"a": [1, None]}}}),
    RawCase("headers", "{'d': Decimal('1.5')}", {"headers": {"d": Decimal("1.5")}}),
    RawCase("headers", "{'b': b'\\xff'}", {"headers": {"b": "@"}}, _LONG_FF),
]  # fmt: skip
"""What another producer can get wrong in a RabbitMQ message, one thing at a time."""


async def malformed(host: str, port: int, exchange: str) -> list[RawCase]:
    """Publish every case of :data:`MALFORMED` to ``exchange``; returns them."""
    await publish(host, port, exchange, [case.message() for case in MALFORMED])
    return MALFORMED


async def publish(host: str, port: int, exchange: str, messages: list[RawPublish]) -> None:
    """Publish ``messages`` to ``exchange`` as guest, with confirms; raise if one is refused."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(10):
            await _open(reader, writer)
            data = b""
            for m in messages:
                data += _frames(exchange, m)
            writer.write(data)
            confirmed = 0
            while confirmed < len(messages):
                got = await _read(reader)
                if isinstance(got, Basic.Nack):
                    raise RuntimeError(f"RabbitMQ refused a raw publish: {got}")
                if isinstance(got, commands.Channel.Close | commands.Connection.Close):
                    raise RuntimeError(f"RabbitMQ closed the raw publisher: {got}")
                if isinstance(got, Basic.Ack):
                    confirmed = got.delivery_tag if got.multiple else confirmed + 1
            writer.write(
                frame.marshal(
                    commands.Connection.Close(
                        reply_code=200, reply_text="done", class_id=0, method_id=0
                    ),
                    0,
                )
            )
            while not isinstance(await _read(reader), commands.Connection.CloseOk):
                pass
    finally:
        writer.close()


def _frames(exchange: str, m: RawPublish) -> bytes:
    method = frame.marshal(Basic.Publish(exchange=exchange, routing_key=m.routing_key), _CHANNEL)
    head = frame.marshal(header.ContentHeader(0, len(m.body), m.properties), _CHANNEL)
    for placeholder, replacement in m.swap:
        assert len(placeholder) == len(replacement), (placeholder, replacement)
        assert placeholder in method + head, f"{placeholder!r} is not in the frames"
        method = method.replace(placeholder, replacement)
        head = head.replace(placeholder, replacement)
    return method + head + frame.marshal(ContentBody(m.body), _CHANNEL)


async def _open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(_PROTOCOL)
    await _expect(reader, commands.Connection.Start)
    writer.write(
        frame.marshal(
            commands.Connection.StartOk(
                client_properties={}, mechanism="PLAIN", response="\0guest\0guest"
            ),
            0,
        )
    )
    tune = await _expect(reader, commands.Connection.Tune)
    writer.write(
        frame.marshal(
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0
            ),
            0,
        )
    )
    writer.write(frame.marshal(commands.Connection.Open(virtual_host="/"), 0))
    await _expect(reader, commands.Connection.OpenOk)
    writer.write(frame.marshal(commands.Channel.Open(), _CHANNEL))
    await _expect(reader, commands.Channel.OpenOk)
    writer.write(frame.marshal(commands.Confirm.Select(), _CHANNEL))
    await _expect(reader, commands.Confirm.SelectOk)


async def _expect(reader: asyncio.StreamReader, kind: type[F]) -> F:
    got = await _read(reader)
    if not isinstance(got, kind):
        raise RuntimeError(f"expected {kind.__name__} from RabbitMQ, got {got}")
    return got


async def _read(reader: asyncio.StreamReader) -> object:
    start = await reader.readexactly(7)
    _, _, size = frame.frame_parts(start)
    assert size is not None
    _, _, found = frame.unmarshal(start + await reader.readexactly(size + 1))
    return found
