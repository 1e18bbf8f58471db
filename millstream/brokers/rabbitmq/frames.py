"""Reading the properties of a message pamqp cannot read, instead of losing the connection.

pamqp decodes a content header strictly: a message id, correlation id or
header name that is not UTF-8, a timestamp past the year 9999, or a header
value of a type it does not know raises while the frame is read, and aiormq
closes the whole connection over it. RabbitMQ then returns the message to
its queue, the next connection receives it again, and every consumer of the
queue goes round a RECONNECTING loop for ever; a producer in another
language writes such a message easily. :func:`install` makes pamqp fall
back, for content headers only and only when its own decoding raised, to
reading each property carefully (:func:`read_header`): text that is not
UTF-8 with backslash escapes, a timestamp it cannot place as none, a header
value it cannot decode as none. What was read so is named in the header
:data:`UNREADABLE`, which the envelope reports in a warning naming the
topic and leaves out of the message's headers and of every copy.

The fallback is pamqp's for the whole process (aiormq reads frames through
it); it changes nothing that pamqp could read.
"""

from __future__ import annotations

import struct
from typing import Any

import pamqp.frame
from pamqp import decode, exceptions
from pamqp.header import ContentHeader

__all__ = ["UNREADABLE", "install", "read_header"]

UNREADABLE = "x-millstream-unreadable"
"""Header naming the properties :func:`read_header` could not read as AMQP says."""

_FAILED = (ValueError, ArithmeticError, OSError, IndexError, struct.error)


def install() -> None:
    """Make pamqp read content headers it cannot decode carefully. Safe twice."""
    strict = pamqp.frame._unmarshal_header_frame
    if getattr(strict, "careful", False):
        return

    def careful(frame_data: bytes) -> ContentHeader:
        try:
            return strict(frame_data)
        except (exceptions.UnmarshalingException, *_FAILED):
            return read_header(frame_data)

    careful.careful = True  # type: ignore[attr-defined]
    pamqp.frame._unmarshal_header_frame = careful


def read_header(data: bytes) -> ContentHeader:
    """A content header whose unreadable properties were read carefully, see the module."""
    header = ContentHeader()
    try:
        header.class_id, header.weight, header.body_size = struct.unpack(">HHQ", data[0:12])
        consumed, flags = ContentHeader._get_flags(data[12:])
        rest = data[12 + consumed :]
        properties = header.properties
        unreadable: list[str] = []
        for name in properties.__slots__:
            if flags & properties.flags[name]:
                kind = getattr(type(properties), f"_{name}")
                consumed, value = _property(rest, kind, name, unreadable)
                setattr(properties, name, value)
                rest = rest[consumed:]
    except _FAILED as exc:  # not a header at all: as pamqp would fail
        raise exceptions.UnmarshalingException("ContentHeader", exc) from exc
    if unreadable:
        headers = dict(properties.headers or {})
        headers[UNREADABLE] = "; ".join(unreadable)
        properties.headers = headers
    return header


def _property(data: bytes, kind: str, name: str, unreadable: list[str]) -> tuple[int, Any]:
    try:
        return decode.by_type(data, kind)
    except _FAILED:
        pass
    if kind == "shortstr":
        raw = data[1 : 1 + data[0]]
        unreadable.append(f"{name}={raw!r}")
        return 1 + data[0], raw.decode("utf-8", "backslashreplace")
    if kind == "timestamp":
        unreadable.append(f"{name}={struct.unpack('>Q', data[:8])[0]}")
        return 8, None
    if kind == "table":
        return _table(data, name, unreadable)
    raise ValueError(f"cannot read property {name} ({kind})")


def _table(data: bytes, where: str, unreadable: list[str]) -> tuple[int, dict[str, Any]]:
    """A field table: names that are not UTF-8 escaped, values that cannot be read none."""
    end = 4 + struct.unpack(">I", data[:4])[0]
    offset, table = 4, {}
    while offset < end:
        raw_name = data[offset + 1 : offset + 1 + data[offset]]
        offset += 1 + data[offset]
        try:
            name = raw_name.decode()
        except UnicodeDecodeError:
            name = raw_name.decode("utf-8", "backslashreplace")
            unreadable.append(f"{where} header name {raw_name!r}")
        size, value = _value(data[offset:end], f"{where} {name}", unreadable)
        if size is None:
            kind = data[offset : offset + 1]
            unreadable.append(f"{where} from {name!r} on: a value of type {kind!r}")
            break
        table[name] = value
        offset += size
    return end, table


def _value(data: bytes, where: str, unreadable: list[str]) -> tuple[int | None, Any]:
    """(size, value) of a table value; one pamqp cannot read is none (a table is read
    carefully); ``(None, None)`` when even its size is unknown."""
    try:
        return decode.embedded_value(data)
    except _FAILED:
        pass
    kind = data[0:1]
    if kind == b"T":
        unreadable.append(f"{where}={struct.unpack('>Q', data[1:9])[0]}")
        return 9, None
    if kind == b"F":
        consumed, table = _table(data[1:], where, unreadable)
        return 1 + consumed, table
    if kind == b"A":
        unreadable.append(f"{where}: an array it cannot read")
        return 5 + struct.unpack(">I", data[1:5])[0], None
    return None, None
