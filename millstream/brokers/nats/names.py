"""The NATS broker's URL and names: what ``nats://`` says, and every stream and subject it uses.

JetStream names (streams, consumers) allow letters, digits, ``_`` and ``-``;
a topic or group with anything else is made safe and a hash of the original
appended (:func:`_token`). The whole mapping is in docs/brokers/nats.md.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from millstream.errors import ConfigError
from millstream.urls import redact

__all__ = [
    "DEAD_PREFIX",
    "DEFAULT_LEASE",
    "PRIVATE_PREFIX",
    "Names",
    "NatsOptions",
    "check_topic",
    "parse_url",
]

DEFAULT_LEASE = 30.0
DEFAULT_MAX_ACK_PENDING = 20_000
EXPECTED = "nats://[user:password@]host:4222, optionally with ?lease=30&max_ack_pending=20000"

PRIVATE_PREFIX = "_ms"  # subjects of group-private messages: _ms.<stream>.<consumer>
DEAD_PREFIX = "_msdlq"  # subjects of dead letters: _msdlq.<dead-letter stream>

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_NAME_MAX = 64


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """What a ``nats://`` URL says: where to connect, and millstream's own parameters."""

    server: str
    """The URL nats-py connects to (credentials included, millstream's parameters removed)."""
    lease: float = DEFAULT_LEASE
    """The consumer's ``ack_wait``: how long a member that stopped calling keeps a message."""
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING
    """The group's cap on unacknowledged messages, every member and waiting retry included."""


def parse_url(url: str) -> NatsOptions:
    """Split ``url`` into nats-py's URL and millstream's ``lease`` and ``max_ack_pending``.

    Raises ``ConfigError`` naming the URL, what is wrong and the expected form.
    """
    parts = urlsplit(url)
    shown = redact(url)
    if parts.scheme != "nats":
        raise ConfigError(f"broker URL {shown!r} is not a NATS URL; expected {EXPECTED}")
    if not parts.hostname:
        raise ConfigError(f"broker URL {shown!r} has no host; expected {EXPECTED}")
    lease, max_ack_pending = DEFAULT_LEASE, DEFAULT_MAX_ACK_PENDING
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        if name == "lease":
            try:
                lease = float(raw)
            except ValueError:
                lease = math.nan
            if not math.isfinite(lease) or lease <= 0:
                raise ConfigError(
                    f"broker URL {shown!r}: lease={raw!r} must be a number of seconds, "
                    "more than 0; expected e.g. nats://127.0.0.1:4222?lease=30"
                )
        elif name == "max_ack_pending":
            if not raw.isdigit() or int(raw) < 1:
                raise ConfigError(
                    f"broker URL {shown!r}: max_ack_pending={raw!r} must be a whole number "
                    "of messages, 1 or more; expected e.g. nats://127.0.0.1:4222?max_ack_pending=20000"
                )
            max_ack_pending = int(raw)
        else:
            raise ConfigError(
                f"broker URL {shown!r}: unknown parameter {name!r}; expected {EXPECTED}"
            )
    server = urlunsplit(parts._replace(query="", fragment=""))
    return NatsOptions(server, lease=lease, max_ack_pending=max_ack_pending)


def _token(text: str) -> str:
    """``text`` as a JetStream name: what is not a letter, digit, ``_`` or ``-`` becomes ``_``.

    Whenever that changed something (or the name is long) a hash of the
    original is appended, so ``a.b`` and ``a_b`` never share a stream.
    """
    safe = _UNSAFE.sub("_", text)
    if safe != text or len(safe) > _NAME_MAX:
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        safe = f"{safe[:_NAME_MAX]}_{digest}"
    return safe


@dataclass(frozen=True, slots=True)
class Names:
    """Every JetStream name and subject of one topic and group (see docs/brokers/nats.md)."""

    topic: str
    group: str

    @property
    def stream(self) -> str:
        """The topic's stream, created by the first publisher or subscriber."""
        return f"MS_{_token(self.topic)}"

    @property
    def private_subjects(self) -> str:
        """The wildcard the topic's stream also holds: messages meant for one group only."""
        return f"{PRIVATE_PREFIX}.{self.stream}.*"

    @property
    def consumer(self) -> str:
        """The group's durable pull consumer on the topic's stream."""
        return _token(self.group)

    @property
    def private(self) -> str:
        """Where released and replayed messages go: only this group takes them."""
        return f"{PRIVATE_PREFIX}.{self.stream}.{self.consumer}"

    @property
    def dead_stream(self) -> str:
        """The group's dead-letter stream (one per topic and group)."""
        digest = hashlib.sha256(f"{self.topic}\0{self.group}".encode()).hexdigest()[:10]
        return f"MSDLQ_{_token(self.topic)[:40]}_{self.consumer[:40]}_{digest}"

    @property
    def dead(self) -> str:
        """The subject of the group's dead-letter stream."""
        return f"{DEAD_PREFIX}.{self.dead_stream}"

    @property
    def pull(self) -> str:
        """Where a member asks the group's consumer for messages."""
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}"


def check_topic(topic: str) -> None:
    """Raise ``ConfigError`` unless ``topic`` can be a NATS subject of its own stream."""
    tokens = topic.split(".")
    problem = None
    if not topic or any(not token for token in tokens):
        problem = "has an empty token (leading, trailing or double dot)"
    elif any(c.isspace() for c in topic):
        problem = "contains white space"
    elif any(token in ("*", ">") for token in tokens):
        problem = "has a wildcard ('*' or '>')"
    elif topic.startswith(("$", f"{PRIVATE_PREFIX}.", f"{DEAD_PREFIX}.")):
        problem = f"starts with '$', '{PRIVATE_PREFIX}.' or '{DEAD_PREFIX}.', which are reserved"
    if problem:
        raise ConfigError(
            f"topic {topic!r} {problem}; a NATS topic is a subject such as 'orders' or 'orders.eu'"
        )
