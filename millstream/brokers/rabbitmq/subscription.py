"""One member of a group on RabbitMQ: a consumer on the group's queue, on a channel of its own.

RabbitMQ pushes deliveries up to the prefetch window; they wait in the
subscription until ``fetch`` hands them out. Every delivery not yet settled
is *held* (by delivery tag): what ``settle`` acks, what ``lag`` counts and
what ``close`` releases. When the channel is lost instead, what it held (and
the acks still on their way) goes into the connection's
:class:`~millstream.brokers.rabbitmq.returns.Returns` for the queue, so the
deliveries that come back are counted as they should be.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress

from aiormq.abc import AbstractChannel, DeliveredMessage

from millstream.brokers.base import Lag, due_only
from millstream.brokers.rabbitmq.connection import Publication, RabbitMqConnection, translated
from millstream.brokers.rabbitmq.reading import counted, messages, returns_of
from millstream.brokers.rabbitmq.topology import declare_retry
from millstream.brokers.rabbitmq.wire import (
    Names,
    copy,
    dead_copy,
    hold_step,
    retry_step,
    tag_of,
)
from millstream.errors import BrokerError, BrokerUnavailable
from millstream.message import HEADER_ATTEMPT, Message, new_message_id
from millstream.urls import redact

__all__ = ["RabbitMqSubscription", "prefetch_window"]

log = logging.getLogger("millstream.brokers")


def prefetch_window(prefetch: int) -> int:
    """``basic.qos`` prefetch count for a consumer whose runtime fetches ``prefetch`` at a time.

    Twice the runtime's batch: RabbitMQ refills the window while a batch
    is handled and its acks are on their way, instead of waiting for them.
    """
    return max(1, min(65535, 2 * prefetch))


class RabbitMqSubscription:
    """A consumer on the group's queue; receipts are ``(subscription, delivery tag)``."""

    def __init__(
        self,
        connection: RabbitMqConnection,
        names: Names,
        channel: AbstractChannel,
        prefetch: int,
        member: str | None = None,
        *,
        forget: Callable[[RabbitMqSubscription], None],
    ) -> None:
        self.taken_over = 0  # messages taken from members that crashed
        self.member = member
        self._connection = connection
        self._forget = forget  # the broker's: stop tracking this once closed
        self._names = names
        self._channel = channel
        self.topic = names.topic
        self.group = names.group
        self.prefetch = prefetch_window(prefetch)
        self._quorum = connection.options.queue_type == "quorum"
        self._returns = connection.returns(names.queue, most=8 * self.prefetch)
        self._consumer_tag: str | None = None
        self._buffer: deque[DeliveredMessage] = deque()
        self._arrived = asyncio.Event()
        # Delivered and not settled, by tag (dicts keep delivery order), and
        # every tag in delivery order until the run below it is acked.
        self._held: dict[int, DeliveredMessage] = {}
        self._order: deque[int] = deque()
        self._acking: list[dict[int, DeliveredMessage]] = []  # acks on their way, by batch
        self._retry_queues: set[int] = set()
        self._closed = False
        self._lost = False
        self._loss_noted = False
        channel.closing.add_done_callback(self._on_channel_closed)

    # -- receiving ---------------------------------------------------------------

    async def fetch(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to ``max_messages`` deliveries, waiting up to ``timeout`` for the first.

        The first fetch starts the consumer. ``fetch(0, 0)`` only checks the
        channel (RabbitMQ holds unacked deliveries without a lease). A delayed
        publish delivered before its time goes to the retry queues until it is due.
        """
        self._check()
        if max_messages <= 0:
            return []
        if self._consumer_tag is None:
            await self._consume()
        buffer = self._buffer
        if not buffer and timeout > 0:
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
            self._check()
        taken = min(max_messages, len(buffer))
        if not taken:
            self._check_consumer()
            return []
        popleft = buffer.popleft
        batch = [popleft() for _ in range(taken)]
        out, returned = messages(self.topic, batch, self, self._quorum)
        if not buffer:
            self._arrived.clear()
        returns = self._returns
        given_back = returns.correct(out, self._returns_of) if returns else 0
        if returned and (count := len(returned) - given_back) > 0:
            self._took_over(count)
        # A delayed publish that came before its time waits in a retry queue.
        return await due_only(self, out)

    def _returns_of(self, handed: Message) -> int:
        return returns_of(self._held[handed.receipt[1]], self._quorum)

    def _took_over(self, count: int) -> None:
        self.taken_over += count
        log.warning(
            "rabbitmq: member %s took over %d message(s) of %s/%s that RabbitMQ returned "
            "from a member that went without acking them (a crash or a lost connection); "
            "each counts an attempt",
            self.member or "(unnamed)",
            count,
            self.topic,
            self.group,
        )

    async def _consume(self) -> None:
        with translated(self._connection.url):
            await self._channel.basic_qos(prefetch_count=self.prefetch)
            ok = await self._channel.basic_consume(self._names.queue, self._on_delivery)
        self._consumer_tag = ok.consumer_tag

    async def _on_delivery(self, delivered: DeliveredMessage) -> None:
        tag = tag_of(delivered)
        self._held[tag] = delivered
        self._order.append(tag)
        self._buffer.append(delivered)
        self._arrived.set()

    def _on_channel_closed(self, _: object) -> None:
        if not self._closed:
            self._note_loss()
        self._lost = True
        self._arrived.set()  # wake a waiting fetch, which raises

    def _note_loss(self) -> None:
        """RabbitMQ returns all the channel held, counted, and what was on its way:
        remembered, so that no attempt is counted for what no handler started."""
        if self._loss_noted or self._consumer_tag is None:
            return
        self._loss_noted = True
        held, quorum = self._held, self._quorum
        for acking in self._acking:
            held.update(acking)  # handled, their acks lost: the runtime knows them
        unhanded = {tag_of(delivered) for delivered in self._buffer}
        waiting, handed = [], []
        for tag, delivered in held.items():
            message_id, attempt, returns = counted(delivered, quorum)
            if tag in unhanded:
                waiting.append((message_id, attempt, returns))
            else:
                handed.append((message_id, attempt))
        # RabbitMQ may have sent up to its window in all: what did not arrive comes back too.
        self._returns.lost(self.prefetch - len(held), waiting, handed)
        held.clear()
        self._acking.clear()
        self._buffer.clear()

    # -- settling ----------------------------------------------------------------

    async def settle(
        self,
        acks: Sequence[Message],
        requeues: Sequence[tuple[Message, float]],
        deads: Sequence[tuple[Message, str]],
    ) -> None:
        """Copy requeues and dead letters (confirmed), then ack every settled delivery.

        Deliveries not from this subscription, or already settled, are skipped.
        """
        self._check()
        held = self._held
        tags = [tag for m in acks if (tag := self._tag(m)) is not None and tag in held]
        if requeues or deads:
            copies: list[Publication] = []
            now = time.time()
            for m, delay in requeues:
                if (tag := self._tag(m)) is not None and (delivered := held.get(tag)):
                    step = hold_step(delay) if m.deliver_at > now else retry_step(delay)
                    copies.append(await self._retry_copy(delivered, m.attempt, step))
                    tags.append(tag)
            dlq = self._names.dlq
            for m, reason in deads:
                if (tag := self._tag(m)) is not None and (delivered := held.get(tag)):
                    props = dead_copy(delivered, new_message_id(), m.attempt, reason)
                    copies.append(("", dlq, delivered.body, props))
                    tags.append(tag)
            await self._connection.send(copies, mandatory=True)
        if tags:
            await self._ack(tags)
            if self._returns:
                self._returns.settled(m.id for m in acks)
                self._returns.settled(m.id for m, _ in requeues)
                self._returns.settled(m.id for m, _ in deads)

    async def _retry_copy(
        self, delivered: DeliveredMessage, attempt: int, step: int
    ) -> Publication:
        names = self._names
        props = copy(delivered, **{HEADER_ATTEMPT: attempt})
        if not step:
            return ("", names.queue, delivered.body, props)
        if step not in self._retry_queues:
            with translated(self._connection.url):
                await declare_retry(self._channel, names, step)
            self._retry_queues.add(step)
            self._connection.note_retry_queue(names.retry(step))
        return ("", names.retry(step), delivered.body, props)

    async def _ack(self, tags: list[int]) -> None:
        """Ack ``tags``: one ``multiple`` ack up to the highest tag below which all is settled.

        RabbitMQ's ``multiple`` acks every unacked tag up to the one named,
        which must itself be unacked: so the multiple ack names the highest
        tag of this batch such that no tag below it is still held; the rest
        of the batch is acked one by one.
        """
        held, order = self._held, self._order
        done = set(tags)
        # Until the acks are known applied, a lost channel returns these too.
        acking = {tag: held.pop(tag) for tag in done if tag in held}
        self._acking.append(acking)
        top = 0
        while order and order[0] not in held:
            tag = order.popleft()
            if tag in done:
                top = tag
        channel = self._channel
        with translated(self._connection.url):
            for tag in done:
                if tag > top:
                    await channel.basic_ack(tag, wait=False)
            if top:
                await channel.basic_ack(top, multiple=True, wait=False)
            # Acks have no reply. A settle that returned must have taken
            # effect (a crash right after must not redeliver what was acked),
            # so one round trip on this channel, which handles frames in
            # order, proves the acks were applied: one per batch, not per ack.
            await channel.basic_qos(prefetch_count=self.prefetch)
        self._acking.remove(acking)

    def _tag(self, m: Message) -> int | None:
        receipt = m.receipt
        if type(receipt) is tuple and len(receipt) == 2 and receipt[0] is self:
            tag: int = receipt[1]
            return tag
        return None

    # -- lag ---------------------------------------------------------------------

    async def lag(self) -> Lag | None:
        """Ready in the group's queue and its retry queues, plus what this member holds.

        RabbitMQ's ``queue.declare`` counts only ready messages; what other
        members hold unacked is not known over AMQP, so it is not counted
        (at most their prefetch windows).
        """
        self._check()
        channel = self._channel
        names = self._names
        with translated(self._connection.url):
            total = (await channel.queue_declare(names.queue, passive=True)).message_count or 0
            for step in self._retry_queues:
                declared = await channel.queue_declare(names.retry(step), passive=True)
                total += declared.message_count or 0
            # Deliveries RabbitMQ sent before answering are on their way and
            # not in the count: one more round trip on this channel lets them
            # arrive, so they are counted as held.
            await channel.basic_qos(prefetch_count=self.prefetch)
        return Lag(total=total + len(self._held))

    # -- release -----------------------------------------------------------------

    async def close(self) -> None:
        """Stop consuming, give back everything held (uncounted), close the channel. Safe twice.

        A held message goes back as a confirmed copy at the same attempt,
        then the original is acked; returning it with a reject would count
        a delivery. After a lost connection RabbitMQ has already returned
        everything, counted: the connection remembers what, for the next member.
        """
        if self._closed:
            return
        self._closed = True
        self._forget(self)
        channel = self._channel
        try:
            if not self._lost:
                await self._release(channel)
        except BrokerError:
            self._note_loss()  # not released: RabbitMQ returns it all, counted
        finally:
            self._buffer.clear()
            self._held.clear()
            self._acking.clear()
            self._order.clear()
            with suppress(Exception):
                await channel.close()

    async def _release(self, channel: AbstractChannel) -> None:
        with translated(self._connection.url):
            if self._consumer_tag is not None:
                await channel.basic_cancel(self._consumer_tag)
                await asyncio.sleep(0)  # deliveries that came before the CancelOk
        held = self._held
        if not held:
            return
        queue, returns = self._names.queue, self._returns
        copies: list[Publication] = []
        released: list[str] = []
        for delivered in held.values():
            message_id, attempt, again = counted(delivered, self._quorum)
            if returns:
                attempt = returns.corrected(message_id, attempt, again)
            copies.append(
                ("", queue, delivered.body, copy(delivered, **{HEADER_ATTEMPT: attempt - 1}))
            )
            released.append(message_id)
        await self._connection.send(copies, mandatory=True)
        with translated(self._connection.url):
            await channel.basic_ack(max(held), multiple=True)
        self._buffer.clear()  # released with the rest
        returns.settled(released)

    def _check_consumer(self) -> None:
        """RabbitMQ cancels a consumer whose queue was deleted: that must not look like quiet."""
        consumers = getattr(self._channel, "consumers", None)
        tag = self._consumer_tag
        if tag is not None and consumers is not None and tag not in consumers:
            raise BrokerUnavailable(
                f"broker {redact(self._connection.url)}: RabbitMQ cancelled the consumer of queue "
                f"{self._names.queue!r} (deleted?); subscribing again declares it again"
            )

    def _check(self) -> None:
        if self._closed or self._lost:
            what = "closed" if self._closed else "lost its channel"
            raise BrokerUnavailable(
                f"broker {redact(self._connection.url)}: subscription to {self.topic!r} "
                f"(group {self.group!r}) {what}"
            )
