"""The dead-letter queue of a topic and group on Redis: the stream ``<topic>:dlq:<group>``."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from millstream.brokers.base import DeadLetter
from millstream.brokers.redis import scripts
from millstream.brokers.redis.connection import Arg, RedisConnection, execute
from millstream.brokers.redis.wire import Keys, dead_letter, valid_ids

__all__ = ["RedisDeadLetters"]

_CHUNK = 500  # letters per script run: keeps each one short for the server


class RedisDeadLetters:
    """The dead letters of one topic and group.

    A letter's id is its entry id in the dead-letter stream; the entry keeps
    the message's fields (payload, key, headers, id) with the attempts it
    had, the reason it died and when. Looking creates nothing.
    """

    def __init__(self, connection: RedisConnection, keys: Keys) -> None:
        self._connection = connection
        self._keys = keys

    async def list(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Newest first."""
        if limit <= 0:
            return []

        async def newest(client: Redis) -> list[tuple[bytes, dict[bytes, bytes]]]:
            count = offset + limit
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await execute(
                client, "XREVRANGE", self._keys.dlq, "+", "-", "COUNT", count
            )
            return entries

        entries = await self._connection.call(newest)
        return [dead_letter(self._keys, eid, fields) for eid, fields in entries[offset:]]

    async def count(self) -> int:
        """How many letters the queue holds."""
        return int(
            await self._connection.call(lambda client: execute(client, "XLEN", self._keys.dlq))
        )

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        """Back into the group as fresh deliveries (attempt 1), oldest first; returns how many.

        The group's members get them from its retry stream, at once.
        """
        replayed = 0
        if ids is None:
            while True:
                done = await self._replay([_CHUNK])  # the oldest letters, whichever they are
                replayed += done
                if done < _CHUNK:
                    return replayed
        chosen = sorted(valid_ids(ids), key=_entry_order)
        for start in range(0, len(chosen), _CHUNK):
            replayed += await self._replay([0, *chosen[start : start + _CHUNK]])
        return replayed

    async def _replay(self, args: Sequence[Arg]) -> int:
        keys = [self._keys.dlq, self._keys.retry]
        return int(await self._connection.call(lambda client: scripts.REPLAY(client, keys, args)))

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        """Delete letters for good; returns how many."""
        dlq = self._keys.dlq
        if ids is None:
            return int(await self._connection.call(lambda c: scripts.PURGE_ALL(c, [dlq], [])))
        chosen = valid_ids(ids)
        if not chosen:
            return 0
        return int(
            await self._connection.call(lambda client: execute(client, "XDEL", dlq, *chosen))
        )


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)
