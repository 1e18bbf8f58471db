"""One member of a consumer group on Redis: fetch, settle, lag, release.

See :mod:`millstream.brokers.redis` for the mapping and
:mod:`millstream.brokers.redis.wire` for the keys. Everything a member
does besides reading and settling (keeping what it holds alive, moving due
retries, taking over what dead members held, trimming, forgetting members
long gone) rides on its fetches as one "housekeeping" script at most every
quarter lease: no task of its own, no round trip per message.

A server that stops answering (a silent partition: nothing is reset, the
socket timeout runs out) ends the subscription: ``fetch`` raises
``BrokerUnavailable`` from then on, and what is left to settle or release
gets ``AFTER_SILENCE`` seconds at most, so the consumer reconnects within a
socket timeout and a little.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any, TypeVar

from redis.asyncio import Redis

from millstream.brokers.base import Lag, due_only
from millstream.brokers.redis import scripts
from millstream.brokers.redis.connection import (
    Arg,
    GroupMissing,
    RedisConnection,
    Silent,
    execute,
    queue,
    translated,
)
from millstream.brokers.redis.housekeeping import HOUSEKEEP, took_over
from millstream.brokers.redis.wire import RETRY, TOPIC, Keys, message, messages
from millstream.errors import BrokerUnavailable
from millstream.message import Message
from millstream.urls import redact

__all__ = ["AFTER_SILENCE", "HOUSEKEEPING_MAX", "RedisSubscription"]

T = TypeVar("T")

log = logging.getLogger("millstream.brokers")

HOUSEKEEPING_MAX = 5.0  # seconds between housekeeping runs at most, whatever the lease
_MOVE_LIMIT = 1000  # due retries moved per run; more are moved on the next fetch
_PRUNE_EVERY = 60.0  # seconds between looks for members long gone
# Seconds a settle or release may still take once the server stopped answering
# another command: enough for one that was only slow, short enough that the
# consumer reconnects soon after a silent partition.
AFTER_SILENCE = 1.0


class RedisSubscription:
    """A group member, known to Redis by its member name, else as ``host:pid:random``
    (see ``XINFO CONSUMERS``).

    What it fetched stays in its pending entries list until settled.
    ``close`` gives all of it back at once, uncounted; a member that stops
    calling (a crash) loses it to the others after the lease, counted, as
    Redis's delivery count says, or at once to the next member under its name.
    """

    def __init__(
        self,
        connection: RedisConnection,
        keys: Keys,
        reader: Redis,
        longest_wait: float,
        member: str | None = None,
        *,
        forget: Callable[[RedisSubscription], None],
    ) -> None:
        self.taken_over = 0  # messages taken from members that crashed
        self._connection = connection
        self._forget = forget  # the broker's: stop tracking this once closed
        self._keys = keys
        self._reader = reader
        self.topic = keys.topic
        self.group = keys.group
        random_name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.consumer = member if member is not None else random_name
        self._named = member is not None
        # A named member takes back what its name holds, on its first fetches;
        # what a predecessor in this process only buffered is taken back uncounted.
        self._take_back = self._named
        self._unseen = connection.unseen(keys, self.consumer) if self._named else ((), ())
        self._silence: Silent | None = None  # why the server is taken for gone
        self._deadlines: set[asyncio.Timeout] = set()  # of settles and releases under way
        lease = connection.options.lease
        self._lease_ms = max(1, round(lease * 1000))
        self._interval = min(lease / 4, HOUSEKEEPING_MAX)
        self._longest_wait = min(self._interval, longest_wait)
        self._prune_idle_ms = round(max(lease * 10, 600.0) * 1000)
        self._housekeep_at = 0.0  # the first fetch takes over what a crashed member left
        self._due_at = math.inf
        self._trim_at = time.monotonic() + connection.options.trim_interval
        self._prune_at = 0.0
        self._cursors: list[bytes] = [b"0-0", b"0-0"]
        self._buffer: deque[Message] = deque()
        # What this member handed out or buffered and has not settled: what
        # housekeeping keeps alive, by stream (TOPIC, RETRY).
        self._held: tuple[set[bytes], set[bytes]] = (set(), set())
        self._closed = False

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages``, waiting up to ``timeout`` for the first.

        Retries and released messages come before new ones. ``fetch(0, 0)``
        takes nothing and only keeps what this member holds alive. A fetch
        that fails or is cancelled loses nothing: what Redis delivered that
        never reached this member is taken over after the lease (or released
        by ``close``). A delayed publish read before its time joins the
        group's delayed retries for the time it has left.
        """
        taken = await self._fetch(max_messages, timeout)
        return await due_only(self, taken) if taken else taken

    async def _fetch(self, max_messages: int, timeout: float) -> list[Message]:
        self._check()
        if self._silence is not None:
            raise BrokerUnavailable(f"{self._silence}; subscribe again")
        now = time.monotonic()
        deadline = now + timeout
        taken = [self._buffer.popleft() for _ in range(min(max_messages, len(self._buffer)))]
        while True:
            if now >= self._housekeep_at or now >= self._due_at:
                taken += await self._housekeep(max_messages - len(taken), now)
            want = max_messages - len(taken)
            if want <= 0:
                return taken
            # Wait no longer than the next housekeeping or retry due, so held
            # messages stay alive and retries come on time.
            wait = 0.0 if taken else min(deadline - now, self._longest_wait)
            wait = min(wait, self._housekeep_at - now, self._due_at - now)
            taken += await self._read(want, wait)
            now = time.monotonic()
            if taken or now >= deadline:
                return taken

    async def _read(self, want: int, wait: float) -> list[Message]:
        keys = self._keys
        command: list[Arg] = ["XREADGROUP", "GROUP", keys.group, self.consumer, "COUNT", want]
        if wait > 0:
            command += ["BLOCK", max(1, round(wait * 1000))]
        command += ["STREAMS", keys.retry, keys.stream, ">", ">"]
        reply = await self._in_group(lambda: execute(self._reader, *command))
        taken: list[Message] = []
        for name, entries in reply or ():
            source = RETRY if name == keys.retry else TOPIC
            taken += messages(self.topic, source, entries)
            self._held[source].update(entry[0] for entry in entries)
        # COUNT applies to each stream: what is over goes out on the next fetch.
        if len(taken) > want:
            self._buffer.extend(taken[want:])
            del taken[want:]
        return taken

    async def _housekeep(self, claim: int, now: float) -> list[Message]:
        keys = self._keys
        trim_interval = self._connection.options.trim_interval
        if trim_interval > 0 and now >= self._trim_at:
            self._trim_at = now + trim_interval
            await self.trim()
        prune = now >= self._prune_at
        held_topic, held_retry = self._held
        unseen_topic, unseen_retry = self._unseen if self._take_back else ((), ())
        args: list[Arg] = [
            keys.group,
            self.consumer,
            self._lease_ms,
            max(1, round(self._interval * 500)),  # refresh what idled half an interval
            claim,
            self._cursors[0],
            self._cursors[1],
            _MOVE_LIMIT,
            self._prune_idle_ms if prune else 0,
            int(self._take_back),
            len(held_topic),
            len(held_retry),
            len(unseen_topic),
            *held_topic,
            *held_retry,
            *unseen_topic,
            *unseen_retry,
        ]
        client = self._connection.client()
        run = HOUSEKEEP
        reply = await self._in_group(
            lambda: run(client, [keys.stream, keys.retry, keys.delayed], args)
        )
        topic_cursor, retry_cursor, claimed, next_due, _moved, owners, more = reply
        self._cursors = [topic_cursor, retry_cursor]
        self._housekeep_at = now + self._interval
        self._due_at = math.inf if next_due < 0 else now + next_due / 1000
        if prune:
            self._prune_at = now + _PRUNE_EVERY
        if self._take_back and not more:
            self._take_back, self._unseen = False, ((), ())
        elif self._take_back:
            self._housekeep_at = now  # more to take back: on the next fetch
        taken = []
        for source, eid, flat, count in claimed:
            fields = dict(zip(flat[::2], flat[1::2], strict=False))
            taken.append(message(self.topic, source, eid, fields, count))
            self._held[source].add(eid)
        if owners:
            self._took_over(owners)
        return taken

    def _took_over(self, owners: list[list[Any]]) -> None:
        """Count a takeover and say it once: how many, and from whom."""
        count, whom = took_over(owners)
        self.taken_over += count
        log.warning(
            "redis: member %s took over %d message(s) of %s/%s held by %s",
            self.consumer,
            count,
            self.topic,
            self.group,
            whom,
        )

    async def _in_group(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a read or housekeeping ``call``; if the group is gone (keys deleted,
        data lost), recreate it and run ``call`` again.

        A connection error is not retried here: it must reach the supervisor,
        which reports RECONNECTING and subscribes again.
        """
        url = self._connection.url
        try:
            try:
                with translated(url):
                    return await call()
            except GroupMissing:
                await scripts.ensure_group(self._connection, self._keys)
                with translated(url):
                    return await call()
        except Silent as exc:
            self._fell_silent(exc)
            raise

    def _fell_silent(self, silence: Silent) -> None:
        """The server stopped answering: give what is under way AFTER_SILENCE more at most."""
        if self._silence is None:
            self._silence = silence
        soon = asyncio.get_running_loop().time() + AFTER_SILENCE
        for deadline in self._deadlines:
            when = deadline.when()
            if when is None or when > soon:
                deadline.reschedule(soon)

    async def _call(self, operation: Callable[[Redis], Awaitable[T]]) -> T:
        """``connection.call(operation)``, cut short once the server is known to be silent."""
        limit = None if self._silence is None else AFTER_SILENCE
        try:
            async with asyncio.timeout(limit) as deadline:
                self._deadlines.add(deadline)
                try:
                    return await self._connection.call(operation)
                finally:
                    self._deadlines.discard(deadline)
        except Silent as exc:
            self._fell_silent(exc)
            raise
        except TimeoutError:
            silence = self._silence
            raise BrokerUnavailable(
                f"{silence}; gave up after {AFTER_SILENCE:g}s more"
            ) from silence

    async def settle(
        self,
        acks: Sequence[Message],
        requeues: Sequence[tuple[Message, float]],
        deads: Sequence[tuple[Message, str]],
    ) -> None:
        """Apply a batch of outcomes in one round trip; deliveries not from here are skipped.

        Safe to repeat: an outcome applies only while its entry is pending.
        """
        self._check()
        keys = self._keys
        if not requeues and not deads:
            by_source: tuple[list[bytes], list[bytes]] = ([], [])
            for m in acks:
                if (receipt := _receipt(m)) is not None:
                    by_source[receipt[0]].append(receipt[1])
            if by_source[TOPIC] or by_source[RETRY]:
                await self._call(lambda client: self._ack(client, *by_source))
                self._held[TOPIC].difference_update(by_source[TOPIC])
                self._held[RETRY].difference_update(by_source[RETRY])
            return
        args: list[Arg] = [keys.group]
        outcomes: list[tuple[Message, str, Arg]] = [(m, "a", 0) for m in acks]
        outcomes += [(m, "r", max(0, round(delay * 1000))) for m, delay in requeues]
        outcomes += [(m, "d", reason) for m, reason in deads]
        settled = []
        for m, kind, extra in outcomes:
            if (receipt := _receipt(m)) is not None:
                args += (kind, receipt[0], receipt[1], m.attempt, extra)
                settled.append(receipt)
        script_keys = [keys.stream, keys.retry, keys.delayed, keys.dlq]
        await self._call(lambda client: scripts.SETTLE(client, script_keys, args))
        for source, entry_id in settled:
            self._held[source].discard(entry_id)
        if requeues:
            soonest = time.monotonic() + max(0.0, min(delay for _, delay in requeues))
            self._due_at = min(self._due_at, soonest)

    async def _ack(self, client: Redis, topic_ids: list[bytes], retry_ids: list[bytes]) -> None:
        keys = self._keys
        if not retry_ids:  # the usual case: one command, no pipeline to build
            await execute(client, "XACK", keys.stream, keys.group, *topic_ids)
            return
        pipe = client.pipeline(transaction=False)
        if topic_ids:
            queue(pipe, "XACK", keys.stream, keys.group, *topic_ids)
        # Only this group reads its retry stream: a settled entry can go.
        queue(pipe, "XACK", keys.retry, keys.group, *retry_ids)
        queue(pipe, "XDEL", keys.retry, *retry_ids)
        await pipe.execute()

    async def lag(self) -> Lag | None:
        """Not yet acked: undelivered, in flight or waiting to retry; ``None`` when unknown."""
        self._check()
        keys = self._keys
        lag_keys = [keys.stream, keys.retry, keys.delayed]
        total = await self._connection.call(lambda c: scripts.LAG(c, lag_keys, [keys.group]))
        return None if total < 0 else Lag(total=int(total))

    async def trim(self) -> int:
        """Trim the topic below what every one of its groups still needs; returns how many went.

        Members do this every ``trim`` seconds (URL parameter) on their own.
        """
        stream = self._keys.stream
        return int(await self._call(lambda client: scripts.TRIM(client, [stream], [])))

    async def close(self) -> None:
        """Give back everything this member holds, uncounted, and leave the group. Safe twice."""
        if self._closed:
            return
        self._closed = True
        self._forget(self)
        unseen: tuple[list[bytes], list[bytes]] = ([*self._unseen[TOPIC]], [*self._unseen[RETRY]])
        for m in self._buffer:
            source, entry_id = m.receipt
            unseen[source].append(entry_id)
        self._buffer.clear()
        self._held[TOPIC].clear()
        self._held[RETRY].clear()
        # Stop reading first, so nothing is delivered to this member while it releases.
        connection = self._reader.connection
        with suppress(Exception):
            if connection is not None:
                await connection.disconnect(nowait=True)
            await self._reader.aclose()
        keys = self._keys
        release_keys, args = [keys.stream, keys.retry], [keys.group, self.consumer]
        try:
            await self._call(lambda c: scripts.RELEASE(c, release_keys, args))
        except BrokerUnavailable:
            # Not released: the next member under this name takes it back, and
            # what this one only buffered (never handed out) without counting.
            if self._named and (unseen[TOPIC] or unseen[RETRY]):
                self._connection.remember_unseen(keys, self.consumer, unseen)

    def _check(self) -> None:
        if self._closed:
            raise BrokerUnavailable(
                f"broker {redact(self._connection.url)}: subscription to {self.topic!r} is closed"
            )


def _receipt(message: Message) -> tuple[int, bytes] | None:
    """(stream, entry id) of a delivery this broker made; anything else is ignored."""
    receipt = message.receipt
    if type(receipt) is tuple and len(receipt) == 2 and receipt[0] in (TOPIC, RETRY):
        return receipt  # made by wire.message(s), so well-formed
    return None
