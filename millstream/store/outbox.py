"""The outbox relay: publishes what committed transactions wrote to the outbox.

``tx.publish`` only inserts a row; the relay claims due rows in batches,
publishes them (one ``publish`` call per topic per batch), and marks them
sent. A batch the broker refuses is released with a growing delay and tried
again, so a request that wrote an order succeeds while the broker is down
and its event goes out once the broker is back. A relay that dies between
publishing and marking leaves the claim to run out; the rows go out again
with the same message ids, which idempotent consumers recognise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from millstream.errors import BrokerUnavailable
from millstream.message import OutgoingMessage
from millstream.store.base import Store
from millstream.store.outbox_table import OutboxRow

__all__ = ["OutboxRelay", "RelayStats"]

log = logging.getLogger("millstream.outbox")

Publish = Callable[[str, Sequence[OutgoingMessage]], Awaitable[None]]


@dataclass(slots=True)
class RelayStats:
    published: int = 0
    failed_batches: int = 0
    last_error: str | None = None


class OutboxRelay:
    """One instance's relay. Several instances may run theirs on one store."""

    def __init__(
        self,
        store: Store,
        publish: Publish,
        reconnect: Callable[[], Awaitable[None]],
        *,
        batch: int = 500,
        poll_interval: float = 0.5,
        lease: float = 30.0,
        max_backoff: float = 30.0,
        sent_retention: float = 3600.0,
        processed_retention: float = 7 * 86400.0,
    ) -> None:
        self._store = store
        self._publish = publish
        self._reconnect = reconnect
        self._batch = batch
        self._poll_interval = poll_interval
        self._lease = lease
        self._max_backoff = max_backoff
        self._sent_retention = sent_retention
        self._processed_retention = processed_retention
        self._wake = asyncio.Event()
        self._stopping = False
        self._failed_last = False
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._next_prune = 0.0
        # Published, but the store failed before recording it: recorded first next
        # round (they are still claimed by us), rather than published again once
        # the claim runs out.
        self._unmarked: list[int] = []
        self.stats = RelayStats()

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._unsubscribe = self._store.on_outbox_write(self._wake.set)
            self._task = asyncio.create_task(self._run(), name="millstream-outbox-relay")

    async def stop(self, flush_timeout: float = 5.0) -> None:
        """Publish what is due (for at most ``flush_timeout`` seconds), then stop.

        The batch in flight is finished rather than abandoned; rows still
        unsent when the time is up stay in the outbox for the next start (or
        another instance), unclaimed.
        """
        task, self._task = self._task, None
        if task is None:
            return
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._stopping = True
        self._wake.set()
        try:
            async with asyncio.timeout(flush_timeout):
                await task
        except TimeoutError:
            log.warning("outbox: not everything was published within %.1fs", flush_timeout)
            with contextlib.suppress(BaseException):
                await task  # cancelled: it hands its claimed rows back first
        except Exception:
            log.exception("outbox relay failed while stopping")

    async def relay_once(self) -> int:
        """Claim, publish and mark one batch; returns how many rows it claimed.

        Cancelled half way, it hands the unmarked rows back (due now) before
        letting the cancellation through, so no row waits out a lease.
        """
        if self._unmarked:
            await self._store.outbox_sent(self._unmarked, time.time())
            self._unmarked = []
        now = time.time()
        claimed = await self._store.claim_outbox(self._batch, now, self._lease)
        if not claimed:
            return 0
        try:
            await self._publish_claimed(claimed, now)
        except asyncio.CancelledError:
            unmarked = [(row_id, time.time()) for row_id, _ in claimed]
            with contextlib.suppress(Exception):
                await asyncio.shield(self._store.outbox_failed(unmarked, "relay stopped"))
            raise
        return len(claimed)

    async def _publish_claimed(self, claimed: Sequence[tuple[int, OutboxRow]], now: float) -> None:
        sent: list[int] = []
        failed: list[tuple[int, float]] = []
        error = ""
        for topic, rows in _by_topic(claimed):
            try:
                await self._publish(topic, [_outgoing(row) for _, row in rows])
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if len(rows) > 1 and not _unreachable(exc):
                    # The broker refused the batch, not the connection: one message
                    # may be to blame (too large, say). Alone, the others go out.
                    error = await self._one_by_one(topic, rows, now, sent, failed) or error
                else:
                    failed.extend(
                        (row_id, now + self._backoff(row.attempts)) for row_id, row in rows
                    )
            else:
                sent.extend(row_id for row_id, _ in rows)
        self._failed_last = bool(failed)
        if sent:
            self.stats.published += len(sent)
            try:
                await self._store.outbox_sent(sent, time.time())
            except BaseException:
                self._unmarked.extend(sent)
                raise
        if failed:
            self.stats.failed_batches += 1
            self.stats.last_error = error
            log.warning(
                "outbox: %d message(s) not published (%s); retrying in %.1fs",
                len(failed),
                error,
                failed[0][1] - now,
            )
            await self._store.outbox_failed(failed, error)
            with contextlib.suppress(Exception):
                await self._reconnect()

    async def _one_by_one(
        self,
        topic: str,
        rows: Sequence[tuple[int, OutboxRow]],
        now: float,
        sent: list[int],
        failed: list[tuple[int, float]],
    ) -> str:
        """Publish ``rows`` singly, in order; a key whose message failed holds its later ones.

        Returns the last error, if any. Stops trying (and fails the rest) as
        soon as the broker looks unreachable rather than refusing a message.
        """
        error = ""
        held: set[str] = set()
        unreachable = False
        for row_id, row in rows:
            retry_at = now + self._backoff(row.attempts)
            if unreachable or (row.key is not None and row.key in held):
                failed.append((row_id, retry_at))
                continue
            try:
                await self._publish(topic, [_outgoing(row)])
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                failed.append((row_id, retry_at))
                unreachable = _unreachable(exc)
                if row.key is not None:
                    held.add(row.key)
            else:
                sent.append(row_id)
        return error

    def _backoff(self, attempts: int) -> float:
        return float(min(self._max_backoff, 0.25 * 2 ** max(0, attempts - 1)))

    async def _run(self) -> None:
        pause = self._poll_interval
        while True:
            self._wake.clear()  # before the claim: a commit during it wakes the next round
            try:
                claimed = await self.relay_once()
                if not self._stopping:
                    await self._maybe_prune()
                pause = self._poll_interval
                failed = self._failed_last
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store itself failed: wait and try again
                claimed, failed = 0, True
                log.warning("outbox relay: %s; retrying in %.1fs", exc, pause)
                pause = min(self._max_backoff, pause * 2)
            if self._stopping and (claimed < self._batch or failed):
                return  # drained, or the broker is down: what is left waits for a relay
            if claimed == self._batch:
                continue  # more are waiting
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    async def _maybe_prune(self) -> None:
        now = time.time()
        if now < self._next_prune:
            return
        self._next_prune = now + 60.0
        await self._store.prune(now - self._sent_retention, now - self._processed_retention)


def _outgoing(row: OutboxRow) -> OutgoingMessage:
    return OutgoingMessage(
        row.payload,
        key=row.key,
        headers=dict(row.headers),
        id=row.message_id,
        deliver_at=row.deliver_at,
    )


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the broker cannot be reached (rather than refusing a message)."""
    return isinstance(exc, BrokerUnavailable | OSError | TimeoutError)


def _by_topic(
    claimed: Sequence[tuple[int, OutboxRow]],
) -> list[tuple[str, list[tuple[int, OutboxRow]]]]:
    """Rows grouped by topic, each group in outbox order."""
    groups: dict[str, list[tuple[int, OutboxRow]]] = {}
    for row_id, row in claimed:
        groups.setdefault(row.topic, []).append((row_id, row))
    return list(groups.items())
