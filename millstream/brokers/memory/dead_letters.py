"""The dead letters of one topic and group on the memory broker, kept by the hub."""

from __future__ import annotations

from collections.abc import Sequence

from millstream.brokers.base import DeadLetter
from millstream.brokers.memory.connection import MemoryConnection

__all__ = ["MemoryDeadLetters"]


class MemoryDeadLetters:
    """The dead-letter queue of one topic and group on the memory broker."""

    def __init__(self, connection: MemoryConnection, topic: str, group: str) -> None:
        self._connection = connection
        self._topic = topic
        self._group = group

    async def list(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        self._connection.check()
        letters = self._connection.hub.dead_letters(self._topic, self._group)
        newest_first = list(reversed(letters.values()))
        return newest_first[offset : offset + limit]

    async def count(self) -> int:
        self._connection.check()
        return len(self._connection.hub.dead_letters(self._topic, self._group))

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        self._connection.check()
        return self._connection.hub.replay(self._topic, self._group, ids)

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        self._connection.check()
        letters = self._connection.hub.dead_letters(self._topic, self._group)
        chosen = list(letters) if ids is None else [i for i in ids if i in letters]
        for letter_id in chosen:
            del letters[letter_id]
        return len(chosen)
