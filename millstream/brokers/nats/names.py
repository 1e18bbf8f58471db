"""Every JetStream stream, consumer and subject the NATS broker uses, named from topic and group.

JetStream names (streams, consumers) allow letters, digits, ``_`` and ``-``;
a topic or group with anything else is made safe and a hash of the original
appended (:func:`_token`). The whole mapping is in docs/brokers/nats.md.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from millstream.errors import ConfigError

__all__ = ["DEAD_PREFIX", "HELD_STREAM", "HELD_SUBJECTS", "PRIVATE_PREFIX", "Names", "check_topic"]

PRIVATE_PREFIX = "_ms"  # subjects of group-private messages: _ms.<stream>.<consumer>
DEAD_PREFIX = "_msdlq"  # subjects of dead letters: _msdlq.<dead-letter stream>
# Members' records and retry notes (see members.py), inside the reserved _ms. prefix.
HELD_STREAM = "MSHELD"  # never a topic's ("MS_...") or dead letters' ("MSDLQ_...") name
HELD_SUBJECTS = ["_ms.held.>", "_ms.retried.>"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_NAME_MAX = 64


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
