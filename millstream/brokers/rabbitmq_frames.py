"""Reading any frame RabbitMQ passes on, whatever another producer wrote into it.

RabbitMQ relays a message's properties as the publisher sent them, without
checking them. pamqp (the frame codec under aiormq) raises on two things a
publisher can send: a short string that is not UTF-8 (a message id, a
header name, a routing key) and a timestamp outside ``datetime``'s years
(milliseconds where seconds belong, say). aiormq's reader then dies, the
connection with it, and the message comes back on every reconnect: one bad
message would stop every member of its group for good.

:func:`install` swaps those decoders in pamqp's dispatch tables for ones that
cannot fail that way: a short string that is not UTF-8 is read with
backslash escapes (the same bytes always give the same text, so an id read
that way stays stable across redeliveries), as an :class:`Escaped` string the
envelope can tell apart to warn about it; a timestamp out of range stays the
number it was. Everything pamqp reads today reads the same, at the same cost.
The tables are process-wide, so this applies to every pamqp user in the
process (aio-pika included), which only ever trades a lost connection for a
readable value.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable
from typing import Any

from pamqp import decode

__all__ = ["Escaped", "install"]

_LENGTH = struct.Struct(">I")
_STAMP = struct.Struct(">Q")


class Escaped(str):
    """A short string that was not UTF-8, read with backslash escapes (``\\xff``)."""

    __slots__ = ()


def _short_str(value: bytes) -> tuple[int, str]:
    try:
        length = value[0]
    except IndexError as err:
        raise ValueError("Could not unpack short string value") from err
    raw = value[1 : length + 1]
    try:
        return length + 1, raw.decode("utf-8")
    except UnicodeDecodeError:
        return length + 1, Escaped(raw.decode("utf-8", "backslashreplace"))


def _timestamp(value: bytes) -> tuple[int, datetime.datetime | int]:
    try:
        seconds = _STAMP.unpack(value[0:8])[0]
    except struct.error as err:
        raise ValueError("Could not unpack timestamp value") from err
    # As pamqp: anything after the year 2106 is taken for milliseconds.
    scaled = seconds / 1000.0 if seconds > 0xFFFFFFFF else seconds
    try:
        return 8, datetime.datetime.fromtimestamp(scaled, tz=datetime.UTC)
    except (ValueError, OverflowError, OSError):
        return 8, seconds  # no datetime has it: the number, as sent


def _field_table(value: bytes) -> tuple[int, dict[str, Any]]:
    """pamqp's ``field_table``, with names read by :func:`_short_str`."""
    try:
        length = _LENGTH.unpack(value[0:4])[0]
    except struct.error as err:
        raise ValueError("Could not unpack data") from err
    offset, end = 4, 4 + length
    if end > len(value):
        raise ValueError("Field table length exceeds available data")
    data: dict[str, Any] = {}
    embedded = decode.embedded_value
    while offset < end:
        key_length = value[offset]
        if offset + 1 + key_length > end:
            raise ValueError("Field table key length exceeds data")
        consumed, key = _short_str(value[offset : offset + 1 + key_length])
        offset += consumed
        consumed, data[key] = embedded(value[offset:])
        offset += consumed
    return end, data


_INSTALLED: dict[str, Callable[..., Any]] = {}


def install() -> None:
    """Put the lenient decoders into pamqp's dispatch tables (once; safe to repeat)."""
    if _INSTALLED:
        return
    _INSTALLED.update(shortstr=_short_str, timestamp=_timestamp, table=_field_table)
    decode.METHODS.update(_INSTALLED)
    decode.TABLE_MAPPING[b"T"] = _timestamp
    decode.TABLE_MAPPING[b"F"] = _field_table
