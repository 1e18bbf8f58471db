"""What every part of the NATS broker shares: the live connection, its streams and consumers.

:class:`JetStream` is what the broker owns and hands to its subscriptions,
dead-letter queues and member records, instead of itself. It keeps the
current :class:`~millstream.brokers.nats.connection.Connection` (a fresh one
after a loss: consumers reconnecting at once share it), creates streams and
durable consumers on first use, and publishes with the stream's
acknowledgement of every message, up to ``_WINDOW`` of them in flight at
once, all answered on one inbox of the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from nats.js import api
from nats.js import errors as js_errors

from millstream.brokers.nats.connection import (
    REQUEST_TIMEOUT,
    Connection,
    NatsOptions,
    api_error,
    translated,
)
from millstream.brokers.nats.lost import LostDeliveries
from millstream.brokers.nats.names import HELD_STREAM, HELD_SUBJECTS, Names
from millstream.brokers.nats.wire import letter_headers
from millstream.errors import AuthenticationError, BrokerError, BrokerUnavailable, ConfigError
from millstream.message import Message
from millstream.urls import redact, refuse_unknown_hosts

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = ["JetStream", "StreamMissing"]

_WINDOW = 8192  # publishes awaiting their acknowledgement at once
_OVERLAP = 10065  # JetStream: subjects overlap with an existing stream
_NAME_IN_USE = 10058  # JetStream: stream name already in use (with another config)
_HELD_KEEP = 24 * 3600.0  # seconds a member's record or a retry note is kept at most
_HELD_MAX_BYTES = 64 * 1024 * 1024

_NO_STREAM = "no stream takes this subject"

log = logging.getLogger("millstream.brokers")


class StreamMissing(BrokerError):
    """Published to a subject that no stream takes (the stream was deleted)."""


class _Pending:
    """The acknowledgements one publish call is waiting for."""

    __slots__ = ("errors", "received", "target", "woken")

    def __init__(self) -> None:
        self.received = 0
        self.target = 0
        self.errors: list[str] = []
        self.woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class JetStream:
    """One broker object's connection to NATS JetStream, as its parts use it."""

    def __init__(self, url: str, options: NatsOptions) -> None:
        self.url = url
        self.options = options
        self._connection: Connection | None = None
        self._streams: set[str] = set()
        self._pending: dict[str, _Pending] = {}
        self._reply_prefix = ""
        self._calls = itertools.count(1)
        self._connecting = asyncio.Lock()
        self._held_refused = False
        self._lost: dict[tuple[str, str], LostDeliveries] = {}

    async def connect(self) -> None:
        """Connect unless connected; after a lost connection, a fresh one. Safe to repeat."""
        async with self._connecting:
            try:
                await self._connect()
            except BrokerUnavailable as exc:
                await refuse_unknown_hosts(self.url, exc)
                raise

    async def _connect(self) -> None:
        current = self._connection
        if current is not None and current.alive:
            return
        if current is not None:
            await current.close()
        self._connection = None
        self._streams.clear()
        connection = Connection(self.url, self.options)
        try:
            await connection.open()
            client = connection.client
            self._reply_prefix = client.new_inbox()
            with translated(self.url):
                await client.subscribe(
                    f"{self._reply_prefix}.*", cb=self._acknowledged, pending_msgs_limit=0,
                    pending_bytes_limit=0,
                )  # fmt: skip
                await connection.guard(client.flush(REQUEST_TIMEOUT), "_INBOX")
        except BaseException:
            await connection.close()
            raise
        self._connection = connection

    async def close(self) -> None:
        """Close the connection."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    def connection(self) -> Connection:
        """The live connection, else ``BrokerUnavailable`` (or what it was refused)."""
        connection = self._connection
        if connection is None:
            raise BrokerUnavailable(f"broker {redact(self.url)}: not connected")
        connection.check()
        return connection

    async def send(
        self, subject: str, items: Iterable[tuple[bytes, dict[str, str]]], stream: str
    ) -> None:
        """Publish ``items`` to ``subject`` and wait for the stream's acknowledgement of each.

        Up to ``_WINDOW`` are unacknowledged at once. Raises
        ``BrokerUnavailable`` when the connection goes or no acknowledgement
        comes for ``REQUEST_TIMEOUT``, ``StreamMissing`` when no stream takes
        ``subject``, ``BrokerError`` when the stream refused one.
        """
        connection = self.connection()
        client = connection.client
        pending = _Pending()
        token = str(next(self._calls))
        self._pending[token] = pending
        reply = f"{self._reply_prefix}.{token}"
        sent = 0
        try:
            with translated(self.url):
                for payload, headers in items:
                    if sent - pending.received >= _WINDOW:
                        await self._wait(pending, sent - _WINDOW // 2, connection, subject, stream)
                    await client.publish(subject, payload, reply=reply, headers=headers)
                    sent += 1
            await self._wait(pending, sent, connection, subject, stream)
        finally:
            del self._pending[token]
        if pending.errors:
            self._streams.discard(stream)  # it may be gone: check it again next time
            kind = StreamMissing if pending.errors[0] == _NO_STREAM else BrokerError
            raise kind(
                f"broker {redact(self.url)}: the stream {stream!r} refused "
                f"{len(pending.errors)} of {sent} messages to {subject!r}: {pending.errors[0]}"
            )

    async def _wait(
        self, pending: _Pending, count: int, connection: Connection, subject: str, stream: str
    ) -> None:
        pending.target = count
        while pending.received < count:
            seen = pending.received
            if pending.woken.done():
                pending.woken = asyncio.get_running_loop().create_future()
            await asyncio.wait(
                (pending.woken, connection.changed()),
                timeout=REQUEST_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
            connection.check(subject, stream, "_INBOX")
            if pending.received == seen and pending.received < count:
                await connection.probe()  # a silent partition: lose the connection now
                connection.check(subject, stream, "_INBOX")
                raise BrokerUnavailable(
                    f"broker {redact(self.url)}: no acknowledgement for messages to "
                    f"{subject!r} within {REQUEST_TIMEOUT}s"
                )

    async def _acknowledged(self, msg: Msg) -> None:
        pending = self._pending.get(msg.subject.rpartition(".")[2])
        if pending is None:
            return
        data = msg.data
        if not data or b'"error"' in data[:16]:
            status = (msg.headers or {}).get("Status", "")
            refused = data.decode(errors="replace")
            pending.errors.append(_NO_STREAM if status == "503" else refused)
        pending.received += 1
        if pending.received >= pending.target and not pending.woken.done():
            pending.woken.set_result(None)

    async def bury(self, names: Names, deads: Sequence[tuple[Message, str]]) -> None:
        """Copy ``deads`` into the group's dead-letter stream; returns once it has them all."""
        await self.ensure_dead_stream(names)
        letters = ((m.payload, letter_headers(m, reason)) for m, reason in deads)
        await self.send(names.dead, letters, names.dead_stream)

    async def ensure_stream(self, names: Names) -> None:
        """Create the topic's stream unless it exists; add our subjects to it if it lacks them."""
        try:
            await self._ensure(names.stream, [names.topic, names.private_subjects])
        except js_errors.APIError as exc:
            if exc.err_code == _OVERLAP:
                raise ConfigError(
                    f"broker {redact(self.url)}: topic {names.topic!r} is already taken by "
                    f"another stream (its subjects overlap {names.topic!r}); millstream keeps "
                    f"each topic in a stream of its own ({names.stream!r}): remove the subject "
                    "from the other stream"
                ) from None
            raise api_error(self.url, exc, f"creating the stream {names.stream!r}") from None

    async def ensure_dead_stream(self, names: Names) -> None:
        """Create the group's dead-letter stream unless it exists."""
        try:
            await self._ensure(names.dead_stream, [names.dead])
        except js_errors.APIError as exc:
            raise api_error(self.url, exc, f"creating the stream {names.dead_stream!r}") from None

    async def ensure_held_stream(self) -> bool:
        """Create ``MSHELD`` (members' records, retry notes) unless it exists; ``False`` if refused.

        Refused (permissions, limits), members work on without: what a crashed
        member held comes back after ``ack_wait``, and takeovers go uncounted.
        """
        if self._held_refused:
            return False
        try:
            await self._ensure(
                HELD_STREAM,
                HELD_SUBJECTS,
                storage=api.StorageType.MEMORY,
                max_msgs_per_subject=1,
                max_age=_HELD_KEEP,
                max_bytes=_HELD_MAX_BYTES,
            )
        except js_errors.APIError as exc:
            refusal: BrokerError = api_error(self.url, exc, f"creating the stream {HELD_STREAM!r}")
        except AuthenticationError as exc:
            refusal = exc
        else:
            return True
        if isinstance(refusal, BrokerUnavailable):
            raise refusal
        self._held_refused = True
        log.warning(
            "nats: %s; without it a member that restarts under its name waits ack_wait for what "
            "it held, and takeovers are not counted (grant '$JS.API.>' and '_ms.>', see "
            "docs/brokers/nats.md)",
            refusal,
        )
        return False

    async def _ensure(self, stream: str, subjects: list[str], **settings: Any) -> None:
        if stream in self._streams:
            return
        connection = self.connection()
        js = connection.client.jetstream(timeout=REQUEST_TIMEOUT)
        mine = (stream, "_INBOX")
        try:
            info = await connection.guard(js.stream_info(stream), *mine)
        except js_errors.NotFoundError:
            settings.setdefault("storage", api.StorageType.FILE)
            config = api.StreamConfig(
                name=stream,
                subjects=subjects,
                retention=api.RetentionPolicy.LIMITS,
                discard=api.DiscardPolicy.OLD,
                **settings,
            )
            try:
                await connection.guard(js.add_stream(config), *mine)
            except js_errors.BadRequestError as exc:
                if exc.err_code != _NAME_IN_USE:  # another process created it meanwhile
                    raise
        else:
            have = list(info.config.subjects or [])
            if any(s not in have for s in subjects):
                info.config.subjects = have + [s for s in subjects if s not in have]
                await connection.guard(js.update_stream(info.config), *mine)
        self._streams.add(stream)

    def forget_stream(self, stream: str) -> None:
        """Check ``stream`` again before its next use (it was found deleted)."""
        self._streams.discard(stream)

    async def ensure_consumer(self, names: Names) -> int:
        """Create the group's durable consumer (or bring its lease and cap up to date).

        Returns its delivery sequence: how many deliveries it has made so far.
        """
        await self.ensure_stream(names)
        connection = self.connection()
        js = connection.client.jetstream(timeout=REQUEST_TIMEOUT)
        config = api.ConsumerConfig(
            durable_name=names.consumer,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.options.lease,
            max_deliver=-1,  # the RetryPolicy decides; the server must not drop a message
            max_ack_pending=self.options.max_ack_pending,
            replay_policy=api.ReplayPolicy.INSTANT,
        )
        mine = (names.stream, "_INBOX")
        try:
            try:
                info = await connection.guard(js.add_consumer(names.stream, config), *mine)
            except js_errors.NotFoundError:  # the stream went since we looked
                self._streams.discard(names.stream)
                await self.ensure_stream(names)
                info = await connection.guard(js.add_consumer(names.stream, config), *mine)
        except js_errors.APIError as exc:
            raise api_error(self.url, exc, f"creating the consumer {names.consumer!r}") from None
        return (info.delivered.consumer_seq or 0) if info.delivered is not None else 0

    def lost_deliveries(self, names: Names) -> LostDeliveries:
        """What lost connections swallowed of this group's deliveries (see
        :mod:`millstream.brokers.nats.lost`)."""
        key = (names.stream, names.consumer)
        lost = self._lost.get(key)
        if lost is None:
            lost = self._lost[key] = LostDeliveries(
                self.options.lease, self.options.max_ack_pending
            )
        return lost
