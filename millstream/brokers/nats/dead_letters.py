"""The dead letters of one topic and group on NATS: a stream of their own, by sequence.

Each group of each topic has its dead-letter stream (``Names.dead_stream``,
subject ``_msdlq.<stream>``), so counting is the stream's message count and
a letter's id is its stream sequence: stable, and never reused. Listing
walks sequences down from the newest; replaying publishes a copy to the
group's private subject of the topic's stream (only that group takes it)
and then deletes the letter; purging deletes letters (or the whole stream's
content). Replay and purge skip ids that are gone, so both are safe to repeat.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nats.js import api
from nats.js import errors as js_errors

from millstream.brokers.base import DeadLetter
from millstream.brokers.nats.connection import REQUEST_TIMEOUT, api_error
from millstream.brokers.nats.names import Names
from millstream.brokers.nats.wire import dead_letter, replay_headers

if TYPE_CHECKING:
    from nats.js.manager import JetStreamManager

    from millstream.brokers.nats.streams import JetStream

__all__ = ["NatsDeadLetters"]

_WINDOW = 64  # letters read at once while walking the stream


class NatsDeadLetters:
    """The dead-letter queue of one topic and group (see the module docstring)."""

    def __init__(self, jetstream: JetStream, names: Names) -> None:
        self._jetstream = jetstream
        self._names = names
        self._stream = names.dead_stream

    async def count(self) -> int:
        """Letters in the queue."""
        info = await self._info()
        return 0 if info is None else info.state.messages

    async def list(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Up to ``limit`` letters, newest first, after skipping ``offset`` of them."""
        info = await self._info()
        if info is None or limit <= 0:
            return []
        letters: list[DeadLetter] = []
        skip = offset
        sequence = info.state.last_seq
        first = info.state.first_seq
        while sequence >= first and len(letters) < limit:
            window = range(sequence, max(first, sequence - _WINDOW + 1) - 1, -1)
            for found in await self._read(window):
                if found is None:
                    continue
                if skip:
                    skip -= 1
                elif len(letters) < limit:
                    letters.append(found[1])
            sequence = window[-1] - 1
        return letters

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        """Put letters back into the group as fresh deliveries, oldest first; how many went."""
        sequences = await self._sequences(ids)
        if not sequences:
            return 0
        jetstream = self._jetstream
        await jetstream.ensure_stream(self._names)
        replayed = 0
        for start in range(0, len(sequences), _WINDOW):
            found = [f for f in await self._read(sequences[start : start + _WINDOW]) if f]
            if not found:
                continue
            copies = [(letter.payload, replay_headers(headers)) for headers, letter in found]
            await jetstream.send(self._names.private, copies, self._names.stream)
            deleted = await self._delete([int(letter.id) for _, letter in found])
            replayed += deleted
        return replayed

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        """Delete letters; how many went."""
        if ids is None:
            info = await self._info()
            if info is None or not info.state.messages:
                return 0
            try:
                await self._jetstream.connection().guard(
                    self._js().purge_stream(self._stream), self._stream
                )
            except js_errors.APIError as exc:
                raise api_error(self._jetstream.url, exc, f"purging {self._stream!r}") from None
            return int(info.state.messages)
        return await self._delete(await self._sequences(ids))

    async def _sequences(self, ids: Sequence[str] | None) -> builtins.list[int]:
        """The sequences ``ids`` name (all, oldest first, for ``None``)."""
        if ids is not None:
            return sorted({int(i) for i in ids if i.isdigit()})
        info = await self._info()
        if info is None or not info.state.messages:
            return []
        return list(range(info.state.first_seq, info.state.last_seq + 1))

    async def _read(
        self, sequences: Sequence[int]
    ) -> builtins.list[tuple[dict[str, str], DeadLetter] | None]:
        """The letters at ``sequences`` (``None`` where there is none), read concurrently."""
        connection = self._jetstream.connection()
        names = self._names

        async def one(sequence: int) -> tuple[dict[str, str], DeadLetter] | None:
            try:
                found = await connection.stored(self._stream, sequence=sequence)
            except js_errors.APIError as exc:
                raise api_error(self._jetstream.url, exc, f"reading {self._stream!r}") from None
            if found is None:
                return None
            data, headers = found
            return headers, dead_letter(names.topic, names.group, sequence, data, headers)

        return list(await asyncio.gather(*(one(s) for s in sequences)))

    async def _delete(self, sequences: Sequence[int]) -> int:
        js = self._js()
        connection = self._jetstream.connection()

        async def one(sequence: int) -> bool:
            try:
                return bool(
                    await connection.guard(js.delete_msg(self._stream, sequence), self._stream)
                )
            except js_errors.NotFoundError:
                return False
            except js_errors.APIError as exc:
                if exc.err_code == 10057:  # no message found: already gone
                    return False
                raise api_error(
                    self._jetstream.url, exc, f"deleting from {self._stream!r}"
                ) from None

        deleted = 0
        for start in range(0, len(sequences), _WINDOW):
            chunk = sequences[start : start + _WINDOW]
            deleted += sum(await asyncio.gather(*(one(s) for s in chunk)))
        return deleted

    async def _info(self) -> api.StreamInfo | None:
        """The dead-letter stream's state, or ``None`` while nothing was ever buried."""
        try:
            return await self._jetstream.connection().guard(
                self._js().stream_info(self._stream), self._stream
            )
        except js_errors.NotFoundError:
            return None
        except js_errors.APIError as exc:
            raise api_error(self._jetstream.url, exc, f"reading {self._stream!r}") from None

    def _js(self) -> JetStreamManager:
        return self._jetstream.connection().client.jsm(timeout=REQUEST_TIMEOUT)
