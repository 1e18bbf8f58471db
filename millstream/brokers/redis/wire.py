"""How millstream lays out a topic and a group in Redis, and how a message is a stream entry.

Keys of topic ``T`` and group ``G``::

    T                the topic: one stream shared by every group (XGROUP per group)
    T:retry:G        G's retries and released messages, read with T in one XREADGROUP
    T:delayed:G      G's retries waiting for their time: a sorted set by due time
    T:dlq:G          G's dead letters: a stream

A message is one entry with the fields ``id``, ``published_at``, ``payload``
and, when set, ``key``, ``headers`` (a JSON object) and ``deliver_at`` (a
delayed publish: Unix time before which no member hands it out; a member
that reads it earlier parks it among its group's delayed retries). Entries of the retry
stream also carry ``attempts``: the deliveries the message had before this
entry, so a delivery's attempt is ``attempts`` plus Redis's own delivery
count. Entries written by other tools (no ``id``) are read too: the entry id
stands in for the message id, and travels as ``id`` once the message leaves
the topic (retry, release, dead letter), so it stays the same.

Nothing another producer writes stops a consumer: a field millstream cannot
read (not a number, not UTF-8, headers that are not a JSON object of
strings) is replaced by its default with a warning naming the topic, the
field and the value. Reading stays cheap for entries as millstream writes
them: the careful reading runs only for an entry the usual one fails on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from millstream.brokers.base import DeadLetter
from millstream.message import NO_HEADERS, Message, OutgoingMessage

__all__ = ["RETRY", "TOPIC", "Keys", "dead_letter", "encode", "message", "messages", "valid_ids"]

log = logging.getLogger("millstream.brokers")

N = TypeVar("N", int, float)

# Which stream of a group a delivery came from; part of its receipt.
TOPIC, RETRY = 0, 1

_ENTRY_ID = re.compile(r"\d+-\d+")
_SHOWN = 100  # characters of a malformed value a warning shows


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis keys of one topic and group."""

    topic: str
    group: str

    @property
    def stream(self) -> bytes:
        return self.topic.encode()

    @property
    def retry(self) -> bytes:
        return f"{self.topic}:retry:{self.group}".encode()

    @property
    def delayed(self) -> bytes:
        return f"{self.topic}:delayed:{self.group}".encode()

    @property
    def dlq(self) -> bytes:
        return f"{self.topic}:dlq:{self.group}".encode()


def encode(out: OutgoingMessage) -> list[bytes | str]:
    """The fields of the stream entry for ``out``, ready for XADD."""
    fields: list[bytes | str] = [
        b"id",
        out.id,
        b"published_at",
        repr(out.published_at),
        b"payload",
        out.payload,
    ]
    if out.key is not None:
        fields += (b"key", out.key)
    if out.headers:
        fields += (b"headers", orjson.dumps(out.headers))
    if out.deliver_at is not None:
        fields += (b"deliver_at", repr(out.deliver_at))
    return fields


def messages(topic: str, source: int, entries: list[list[Any]]) -> list[Message]:
    """First deliveries of raw XREADGROUP entries (``[id, [field, value, ...]]``).

    The hot path of consuming: one loop, no call per entry beyond Message
    itself, which halves the cost of going through redis-py's reply parsing.
    An entry it cannot read (another producer's malformed field) sends it and
    the rest of the batch to :func:`message`, which reads field by field.
    """
    taken: list[Message] = []
    append = taken.append
    try:
        for entry_id, flat in entries:
            # Entries written by encode() start id, published_at, payload and may
            # go on with key and headers: read those by position, anything else
            # (retry entries, other writers) by name.
            size = len(flat)
            if (
                size < 6
                or size > 12
                or flat[0] != b"id"
                or flat[2] != b"published_at"
                or flat[4] != b"payload"
            ):
                append(_by_name(topic, source, entry_id, flat))
                continue
            key = headers = None
            at_time = 0.0
            for at in range(6, size, 2):
                name = flat[at]
                if name == b"key":
                    key = flat[at + 1].decode()
                elif name == b"headers":
                    headers = orjson.loads(flat[at + 1])
                    for value in headers.values():  # AttributeError: not an object
                        if type(value) is not str:
                            raise TypeError(value)
                elif name == b"deliver_at":
                    at_time = float(flat[at + 1])
                else:
                    break
            else:
                append(
                    Message(
                        flat[1].decode(),
                        topic,
                        flat[5],
                        key,
                        headers if headers is not None else NO_HEADERS,
                        1,
                        float(flat[3]),
                        None,
                        None,
                        (source, entry_id),
                        at_time,
                    )
                )
                continue
            append(_by_name(topic, source, entry_id, flat))
    except Exception:
        # Entry number len(taken) has a field that is not as encode() writes it.
        for entry_id, flat in entries[len(taken) :]:
            append(_by_name(topic, source, entry_id, flat))
    return taken


def _by_name(topic: str, source: int, entry_id: bytes, flat: list[Any]) -> Message:
    """The first delivery of an entry not laid out as encode() writes it, read field by field."""
    pairs = iter(flat)
    return message(topic, source, entry_id, dict(zip(pairs, pairs, strict=False)), 1)


def message(
    topic: str, source: int, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
) -> Message:
    """The delivery of one entry, on its ``deliveries``-th delivery by Redis's count.

    Never raises: a field that cannot be read gets its default, with a warning.
    """
    msg_id = fields.get(b"id")
    key = fields.get(b"key")
    headers = fields.get(b"headers")
    published = fields.get(b"published_at")
    attempts = fields.get(b"attempts")
    deliver_at = fields.get(b"deliver_at")
    try:
        return Message(
            id=msg_id.decode() if msg_id is not None else entry_id.decode(),
            topic=topic,
            payload=fields.get(b"payload", b""),
            key=key.decode() if key is not None else None,
            headers=_strict_headers(headers) if headers else NO_HEADERS,
            attempt=(int(attempts) if attempts else 0) + deliveries,
            published_at=float(published) if published else _entry_time(entry_id),
            receipt=(source, entry_id),
            deliver_at=float(deliver_at) if deliver_at else 0.0,
        )
    except Exception:
        return _careful(topic, source, entry_id, fields, deliveries)


def _strict_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = orjson.loads(raw)
    for value in headers.values():  # AttributeError: not an object
        if type(value) is not str:
            raise TypeError(value)
    return headers


def _careful(
    topic: str, source: int, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int
) -> Message:
    """Read an entry field by field; each one that cannot be read gets its default."""
    problems: list[str] = []
    msg_id = fields.get(b"id")
    key = fields.get(b"key")
    headers = fields.get(b"headers")
    published = fields.get(b"published_at")
    attempts = fields.get(b"attempts")
    found = Message(
        id=_text(b"id", msg_id, problems) if msg_id is not None else entry_id.decode(),
        topic=topic,
        payload=fields.get(b"payload", b""),
        key=_text(b"key", key, problems) if key is not None else None,
        headers=_lenient_headers(headers, problems) if headers else NO_HEADERS,
        attempt=_number(b"attempts", attempts, int, 0, problems) + deliveries,
        published_at=_number(b"published_at", published, float, _entry_time(entry_id), problems),
        receipt=(source, entry_id),
        deliver_at=_number(b"deliver_at", fields.get(b"deliver_at"), float, 0.0, problems),
    )
    if problems:
        log.warning(
            "redis: topic %r entry %s (message %s): %s",
            topic,
            entry_id.decode(),
            found.id,
            "; ".join(problems),
        )
    return found


def _text(name: bytes, raw: bytes, problems: list[str]) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        text = raw.decode(errors="backslashreplace")
        problems.append(
            f"{name.decode()}={_shown(raw)} is not UTF-8; read with the odd bytes escaped"
        )
        return text


def _number(
    name: bytes, raw: bytes | None, kind: Callable[[bytes], N], default: N, problems: list[str]
) -> N:
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        if name == b"attempts":
            problems.append(f"attempts={_shown(raw)} is not a whole number; counted as 0")
        elif name == b"deliver_at":
            problems.append(
                f"deliver_at={_shown(raw)} is not a number of seconds since the epoch; "
                "delivered at once"
            )
        else:
            problems.append(
                f"{name.decode()}={_shown(raw)} is not a number of seconds since the epoch; "
                "the entry's time stands in"
            )
        return default


def _lenient_headers(raw: bytes, problems: list[str]) -> dict[str, str]:
    expected = "expected a JSON object of strings"
    try:
        headers = orjson.loads(raw)
    except orjson.JSONDecodeError:
        problems.append(f"headers={_shown(raw)} is not JSON ({expected}); ignored")
        return {}
    if not isinstance(headers, dict):
        problems.append(f"headers={_shown(raw)} is not a JSON object ({expected}); ignored")
        return {}
    odd = [name for name, value in headers.items() if not isinstance(value, str)]
    if odd:
        problems.append(
            f"headers={_shown(raw)}: the value of {', '.join(map(repr, odd))} is not a string "
            f"({expected}); handed over as its JSON text"
        )
        for name in odd:
            headers[name] = orjson.dumps(headers[name]).decode()
    return headers


def _shown(raw: bytes) -> str:
    """A malformed value as a warning shows it: its repr, cut short."""
    shown = repr(raw.decode(errors="backslashreplace"))
    return shown if len(shown) <= _SHOWN else f"{shown[: _SHOWN - 3]}..."


def dead_letter(keys: Keys, entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    """A dead-letter stream entry as the queue shows it; never raises, whoever wrote it.

    A field that cannot be read shows its default (headers ``{}``, attempts
    0, the entry's time); ids and keys that are not UTF-8 show their odd
    bytes escaped, as the message had them.
    """
    msg_id = fields.get(b"id")
    key = fields.get(b"key")
    unused: list[str] = []
    return DeadLetter(
        id=entry_id.decode(),
        message_id=msg_id.decode(errors="backslashreplace") if msg_id is not None else "",
        topic=keys.topic,
        group=keys.group,
        payload=fields.get(b"payload", b""),
        key=key.decode(errors="backslashreplace") if key is not None else None,
        headers=_json_object(fields.get(b"headers")),
        attempts=_number(b"attempts", fields.get(b"attempts"), int, 0, unused),
        error=fields.get(b"error", b"").decode(errors="replace"),
        failed_at=_number(
            b"failed_at", fields.get(b"failed_at"), float, _entry_time(entry_id), unused
        ),
    )


def _json_object(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def valid_ids(ids: Sequence[str]) -> list[str]:
    """The ids that can name a stream entry, once each; others cannot be there, so are skipped."""
    return [i for i in dict.fromkeys(ids) if _ENTRY_ID.fullmatch(i)]


def _entry_time(entry_id: bytes) -> float:
    """When Redis added the entry: the milliseconds part of its id."""
    return int(entry_id.split(b"-", 1)[0]) / 1000
