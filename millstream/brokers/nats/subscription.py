"""One member of a group on NATS JetStream: fetch, settle, lag, release.

**Pulling.** A member owns one inbox and asks the group's durable consumer
for a batch (``$JS.API.CONSUMER.MSG.NEXT``) to it. It first asks with
``no_wait`` (the server answers at once with what it has, then a status);
only when that found nothing does it wait on the server with ``expires``
(at most ``_LINGER`` seconds, so a closing member never waits long for its
last request to end). At most one request is open at a time, and what a
request delivers after ``fetch`` returned waits in the member for the next
``fetch``: it is held like everything handed out.

**Settling** is one round trip per batch (:mod:`millstream.brokers.nats.acks`).
A dead letter is copied into the dead-letter stream (acknowledged by the
stream) before its ``+TERM``: a crash in between leaves it delivered again,
never lost.

**Attempts** are JetStream's delivery count, plus ``ms-attempt`` on
group-private copies, less what this process's lost connections swallowed
(:mod:`millstream.brokers.nats.lost`). ``close`` gives back what the member
holds uncounted, which a ``nak`` cannot (it counts a delivery): it publishes
a copy with ``ms-attempt`` = attempts so far to the group's private subject,
then acks the original. Copies are in the topic's stream, which consumers
read whole (NATS 2.9 has one filter subject per consumer); a member acks
another group's copy and passes it by. Copies are rare (a close, a replay).

**Named members and takeovers** (:mod:`millstream.brokers.nats.members`):
a named member keeps a record of what it holds, which its successor under
that name takes back at once; ``taken_over`` counts redeliveries that came
because another member's lease ran out.

**Keeping alive.** A fetch sends ``+WPI`` (work in progress) for everything
the member holds every quarter lease (5 s at most), also while it waits for
more, so a slow handler keeps its message; a member that stopped calling
loses its messages to the others when ``ack_wait`` runs out, and their
delivery count says so.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING

from nats import errors as nats_errors
from nats.js import errors as js_errors

from millstream.brokers.base import Lag
from millstream.brokers.nats.acks import ACK, PROGRESS, TERM, acknowledge, acknowledgements
from millstream.brokers.nats.connection import REQUEST_TIMEOUT, Connection, api_error, translated
from millstream.brokers.nats.lost import consumer_sequence
from millstream.brokers.nats.members import Members
from millstream.brokers.nats.names import PRIVATE_PREFIX, Names
from millstream.brokers.nats.wire import decode, decode_carefully, held_back
from millstream.errors import BrokerError, BrokerUnavailable
from millstream.message import Message
from millstream.urls import redact

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NatsInbox
    from nats.js.api import ConsumerInfo

    from millstream.brokers.nats.streams import JetStream

__all__ = ["NatsSubscription"]

_LINGER = 1.0  # seconds a waiting pull request stays on the server at most
_ANSWER_WITHIN = 1.0  # seconds a pull request may go unanswered past its expiry
_KEEP_ALIVE_MAX = 5.0  # seconds between +WPI rounds at most, whatever the lease
_FINAL = (ACK, TERM)  # the outcomes after which a delivery never comes back


class NatsSubscription:
    """A member of a group: a pull inbox on the group's durable consumer.

    What it fetched stays unacknowledged on the server until settled;
    ``close`` gives all of it back, uncounted.
    """

    def __init__(
        self,
        jetstream: JetStream,
        connection: Connection,
        names: Names,
        member: str | None = None,
        delivered: int = 0,
        on_close: Callable[[NatsSubscription], None] | None = None,
    ) -> None:
        self.taken_over = 0  # messages taken from members that crashed
        self._members = Members(jetstream, connection, names, member)
        self._lost = jetstream.lost_deliveries(names)
        self._delivered = delivered  # the consumer's delivery sequence when this member joined
        self._last_reply = ""  # the last delivery received: how far the consumer's count is known
        self._unsure: list[str] = []  # settled, but whether the server got it is unknown
        self._unrecorded = False  # holds deliveries its record does not list yet
        self._redelivered = 0  # deliveries not handed out yet that the server made before
        self._jetstream = jetstream
        self._on_close = on_close
        self._url = connection.url
        self._connection = connection
        self._names = names
        self.topic = names.topic
        self.group = names.group
        self._stream = names.stream
        self._client = connection.client
        self._inbox = self._client.new_inbox()
        self._sub: NatsInbox | None = None
        self._pull = names.pull
        self._others = f"{PRIVATE_PREFIX}.{names.stream}."
        self._own = names.private
        self._mine = (names.stream, "_INBOX")
        self._consumer = (names.stream, names.consumer)
        self._ready: deque[Message] = deque()
        self._held: dict[str, Message] = {}  # acknowledgement subject -> delivery
        self._open = 0  # messages the open pull request may still deliver (0: none open)
        self._open_until = 0.0
        self._idle = False  # the last request found nothing: wait on the server next time
        self._lingering = False  # the open request waits on the server (not no_wait)
        self._missing = False  # the consumer (or its stream) is gone: recreate it
        self._arrived = asyncio.Event()
        lease = jetstream.options.lease
        self._keep_alive_every = min(lease / 4, _KEEP_ALIVE_MAX)
        self._keep_alive_at = time.monotonic() + self._keep_alive_every
        self._closed = False

    async def start(self) -> None:
        """Open the member's inbox; take back what a crashed member of the same name held."""
        with translated(self._url):
            self._sub = await self._client.subscribe(
                self._inbox, cb=self._received, pending_msgs_limit=0, pending_bytes_limit=0
            )
        self._connection.listen(self._arrived.set)
        await self._members.start()

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages``, waiting up to ``timeout`` for the first.

        ``fetch(0, 0)`` takes nothing and only keeps what this member holds
        alive. A fetch that fails or is cancelled loses nothing: what arrives
        later waits for the next fetch, or ``close`` releases it.
        """
        self._check()
        now = time.monotonic()
        if now >= self._keep_alive_at:
            await self._keep_alive(now)
        if max_messages <= 0:
            return []
        if self._missing:
            await self._recreate()
            now = time.monotonic()
        deadline = now + timeout
        asked = False
        while True:
            ready = self._ready
            if ready and (self._open <= 0 or self._lingering):
                return await self._hand_out(max_messages)
            if self._open > 0 and now > self._open_until:
                await self._unanswered()
            if self._open <= 0:
                if asked and now >= deadline:
                    return []
                await self._ask(max_messages, deadline - now)
                asked = True
            elif now >= deadline:  # out of time with a request still open
                return await self._hand_out(max_messages)
            # A no_wait request is answered at once: wait for all of it.
            until = self._open_until if not self._lingering else min(deadline, self._open_until)
            # What this member holds stays alive while it waits.
            until = min(until, self._keep_alive_at)
            self._arrived.clear()
            if until > now:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), until - now)
            self._connection.check(*self._mine)
            if self._missing:
                await self._recreate()
            now = time.monotonic()
            if now >= self._keep_alive_at:
                await self._keep_alive(now)

    async def _hand_out(self, most: int) -> list[Message]:
        """Up to ``most`` ready messages; what was taken over among them is counted and logged."""
        if self._unrecorded:  # a request still open delivered them
            await self._record()
        ready = self._ready
        batch = [ready.popleft() for _ in range(min(most, len(ready)))]
        if self._redelivered:
            again = [m for m in batch if m.attempt > 1]
            try:
                self.taken_over += await self._members.taken_over(again, self._lost)
            except BrokerUnavailable:
                ready.extendleft(reversed(batch))  # never handed out, as close will say
                raise
            self._redelivered -= len(again)
        for message in batch:
            if message.deliver_at:
                return await self._due(batch)
        return batch

    async def _due(self, batch: list[Message]) -> list[Message]:
        """``batch`` less the delayed publishes not to be handed out yet (``wire.held_back``)."""
        due, naks, copies = held_back(batch, time.time())
        if naks:
            await self.settle((), naks, ())
        if copies:
            await self._members.copy_back(copies)
            for message, _ in copies:
                self._held.pop(message.receipt, None)
            await self._record()
        return due

    async def _record(self) -> None:
        self._unrecorded = False
        await self._members.write(self._held)

    async def _record_quietly(self) -> None:
        """:meth:`_record` from the client's callback, which must never raise."""
        with suppress(BrokerError):  # the connection is lost: the next fetch says so
            await self._record()

    async def _ask(self, batch: int, remaining: float) -> None:
        """Open one pull request: ``no_wait`` unless the last one found nothing."""
        now = time.monotonic()
        self._lingering = self._idle and remaining > 0.001
        if self._lingering:
            expires = min(remaining, _LINGER)
            request: dict[str, object] = {"batch": batch, "expires": int(expires * 1e9)}
            self._open_until = now + expires + _ANSWER_WITHIN
        else:
            request = {"batch": batch, "no_wait": True}
            self._open_until = now + _ANSWER_WITHIN
        self._open = batch
        with translated(self._url):
            await self._client.publish(self._pull, json.dumps(request).encode(), reply=self._inbox)

    async def _unanswered(self) -> None:
        """The open request was never ended: a lost reply, or (NATS 2.9) a deleted consumer.

        A pull request to a consumer that is gone gets no answer at all, so
        look: recreate the consumer if it is not there, else just ask anew.
        """
        # Or a silent partition: then a ping goes unanswered too, and the connection is lost
        # (with the request still open: what it sent there is no attempt, see lost.py).
        await self._connection.probe()
        self._connection.check(*self._mine)
        self._open = 0
        try:
            await self._consumer_info()
        except js_errors.NotFoundError:
            self._missing = True
        except js_errors.APIError as exc:
            raise api_error(self._url, exc, f"looking up {self._consumer[1]!r}") from None

    async def _received(self, msg: Msg) -> None:
        """Every delivery and status of this member's pull requests, in order."""
        reply = msg.reply
        if not reply:  # a status: the open request ended, or the consumer is not there
            status = (msg.headers or {}).get("Status", "")
            if status == "100":  # an idle heartbeat; none are asked for
                return
            if status == "503" or (status == "409" and "Deleted" in str(msg.headers)):
                self._missing = True
            elif status in ("404", "409"):
                # Nothing there, or the group is at max_ack_pending: the next
                # request waits on the server instead of asking again at once.
                self._idle = True
            self._open = 0
            if self._unrecorded:
                await self._record_quietly()
            self._arrived.set()
            return
        self._open -= 1
        self._idle = False
        self._last_reply = reply
        subject = msg.subject
        if subject.startswith(self._others) and subject != self._own:
            # Another group's released or replayed message: not for this group.
            with suppress(nats_errors.Error, OSError):  # lost: it comes back, to be acked again
                await self._client.publish(reply, ACK)
            return
        try:
            message = decode(self.topic, self._stream, msg)
        except Exception:  # another producer's headers: read them one by one
            found = decode_carefully(self.topic, self._stream, msg)
            if found is None:
                return
            message = found
        if message.attempt > 1:
            self._redelivered += 1
        self._held[reply] = message
        self._ready.append(message)
        self._unrecorded = True
        if self._open <= 0:  # the request is complete: one record write per request
            await self._record_quietly()
        self._arrived.set()

    async def settle(
        self,
        acks: Sequence[Message],
        requeues: Sequence[tuple[Message, float]],
        deads: Sequence[tuple[Message, str]],
    ) -> None:
        """Apply a batch of outcomes in one round trip; deliveries not from here are skipped."""
        self._check()
        held = self._held
        if deads:
            buried = [(m, reason) for m, reason in deads if m.receipt in held]
            if buried:
                await self._jetstream.bury(self._names, buried)
        commands, retried = acknowledgements(held, acks, requeues, deads)
        try:
            if retried:  # before the naks, on the same connection: in place when they come back
                await self._members.note_retries(retried)
                await self._record()
            await self._send(commands)
        except BrokerError:
            self._unsure += [subject for subject, _ in commands]
            raise
        self._lost.settled(subject for subject, payload in commands if payload in _FINAL)

    async def _send(self, commands: list[tuple[str, bytes]]) -> None:
        if not await acknowledge(self._connection, commands, *self._mine):
            # No responders: the consumer is gone (deleted, or its stream). Its
            # successor starts over and delivers these again.
            self._missing = True

    async def _keep_alive(self, now: float) -> None:
        self._keep_alive_at = now + self._keep_alive_every
        if self._held:
            with translated(self._url):
                for subject in list(self._held):
                    await self._client.publish(subject, PROGRESS)

    async def _recreate(self) -> None:
        """The consumer (or its stream) was deleted: create it again, from the stream's start."""
        self._missing = False
        self._open = 0
        self._idle = False
        self._jetstream.forget_stream(self._stream)
        self._lost.forget()
        await self._jetstream.ensure_consumer(self._names)

    async def lag(self) -> Lag | None:
        """Waiting plus in flight (retries waiting for their delay included)."""
        self._check()
        try:
            try:
                info = await self._consumer_info()
            except js_errors.NotFoundError:
                await self._recreate()
                info = await self._consumer_info()
        except js_errors.APIError as exc:
            what = f"reading the lag of {self._names.consumer!r}"
            raise api_error(self._url, exc, what) from None
        return Lag(total=(info.num_pending or 0) + (info.num_ack_pending or 0))

    async def _consumer_info(self) -> ConsumerInfo:
        js = self._client.jsm(timeout=REQUEST_TIMEOUT)
        return await self._connection.guard(js.consumer_info(*self._consumer), *self._mine)

    async def close(self) -> None:
        """Give back everything this member holds, uncounted. Safe twice, and when disconnected."""
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            self._on_close(self)
        connection = self._connection
        connection.unlisten(self._arrived.set)
        # Whatever the open request still delivers is held too: let it end first.
        until = min(self._open_until, time.monotonic() + _LINGER + 0.2)
        while self._open > 0 and connection.alive and time.monotonic() < until:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), until - time.monotonic())
            except TimeoutError:
                break
        sub, self._sub = self._sub, None
        if sub is not None and connection.alive:
            try:
                with translated(self._url):
                    await sub.unsubscribe()
            except BrokerError:
                pass
        if connection.alive:
            try:
                await self._members.give_back(list(self._held.values()))
                self._held.clear()
            except BrokerError:
                pass
        if self._held or self._open > 0 or self._unsure:
            # Not given back: ack_wait does (counted), or at once a successor under this
            # name. What no handler started here was no attempt (see lost.py).
            after = consumer_sequence(self._last_reply) if self._last_reply else self._delivered
            receipts = [*self._held, *self._unsure]
            self._lost.record(receipts, self._ready, self._open, after)
        self._held.clear()
        self._ready.clear()

    def _check(self) -> None:
        if self._closed:
            raise BrokerUnavailable(
                f"broker {redact(self._url)}: subscription to {self.topic!r} is closed"
            )
        self._connection.check(*self._mine)
