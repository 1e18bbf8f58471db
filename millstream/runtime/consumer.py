"""``ConsumerRuntime``: one consumer's supervisor, with its states and controls.

The supervisor connects, subscribes and runs a :class:`Session` until the
consumer stops. A lost connection sends it to ``RECONNECTING`` with capped
exponential backoff and jitter; an authentication failure ends it as
``FAILED`` without retrying. ``pause``, ``resume`` and ``set_concurrency``
act on the running session and lose nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from concurrent.futures import ThreadPoolExecutor

from millstream.brokers.base import Broker, Lag, Subscription
from millstream.errors import AuthenticationError, BrokerError, ConfigError
from millstream.retry import RetryPolicy
from millstream.runtime.attempts import UncountedDeliveries
from millstream.runtime.chains import handler_chain
from millstream.runtime.dependencies import Overrides
from millstream.runtime.dispatcher import KeyOf
from millstream.runtime.handler import Invoke, bind_handler, with_timeout
from millstream.runtime.session import Limits, Session
from millstream.runtime.spec import ConsumerSpec, key_function
from millstream.runtime.stats import ConsumerStats, Failure
from millstream.settings import Settings

__all__ = ["ConsumerRuntime", "ConsumerState", "ConsumerStats"]

log = logging.getLogger("millstream.runtime")


class ConsumerState(enum.StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    RECONNECTING = "RECONNECTING"
    PAUSED = "PAUSED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


class ConsumerRuntime:
    """Runs one :class:`ConsumerSpec` against a broker.

    ``dependency_overrides`` replaces providers of the handler's dependencies
    (``ms.dependency_overrides``), for the life of this runtime.
    """

    def __init__(
        self,
        spec: ConsumerSpec,
        broker: Broker,
        settings: Settings,
        *,
        member: str | None = None,
        dependency_overrides: Overrides | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.member = member
        """The stable member name this consumer subscribes under (None: a fresh one each time)."""
        self.broker = broker
        self.settings = settings
        self.retry: RetryPolicy = spec.retry
        self.key_of: KeyOf = key_function(spec.key)
        self.prefetch = spec.prefetch or settings.prefetch
        self.concurrency = spec.concurrency
        self._explicit_inflight = spec.max_inflight or settings.max_inflight
        self.state = ConsumerState.STOPPED
        self.stats = ConsumerStats()
        self.paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._stopping = asyncio.Event()
        self._settled_first = asyncio.Event()
        self._session: Session | None = None
        # Deliveries a lost connection counted that were no attempt; outlives sessions.
        self.uncounted = UncountedDeliveries(most=4 * self.max_inflight)
        self._taken_over = 0  # by subscriptions that have ended
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.invoke: Invoke = handler_chain(
            spec,
            bind_handler(
                spec.handler,
                self._thread_pool,
                self._replace_thread_pool,
                settings=settings,
                overrides=dependency_overrides,
            ),
            (*spec.links, with_timeout(spec.timeout or settings.handler_timeout)),
        )

    @property
    def max_inflight(self) -> int:
        """Messages held at once: the explicit bound, else four fetches (one handled, one
        fetched meanwhile, one settling, one to spare when a round trip is slow) and at
        least two messages per worker."""
        return self._explicit_inflight or max(4 * self.prefetch, 2 * self.concurrency)

    @property
    def taken_over(self) -> int:
        """Messages this consumer took over from members that crashed, since it was made."""
        session = self._session
        return self._taken_over + (session.taken_over if session is not None else 0)

    @property
    def inflight(self) -> int:
        """Messages fetched and not yet settled: what ``max_inflight`` bounds."""
        session = self._session
        return session.inflight if session is not None else 0

    async def start(self) -> None:
        """Start supervising; returns once the first connection attempt has an outcome."""
        if self._task is not None:
            return
        self._stopping.clear()
        self._settled_first.clear()
        self._set_state(ConsumerState.STARTING)
        self._task = asyncio.create_task(self._supervise(), name=f"millstream:{self.name}")
        stopped = asyncio.ensure_future(self._task)
        waiter = asyncio.ensure_future(self._settled_first.wait())
        await asyncio.wait({stopped, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    async def stop(self) -> None:
        """Stop fetching, drain in-flight work, flush outcomes, release the rest."""
        task = self._task
        if task is None:
            return
        if self.state not in (ConsumerState.FAILED, ConsumerState.STOPPED):
            self._set_state(ConsumerState.STOPPING)
        self._stopping.set()
        try:
            await task
        finally:
            self._task = None
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None
            if self.state is not ConsumerState.FAILED:
                self._set_state(ConsumerState.STOPPED)

    def pause(self) -> None:
        """Stop fetching; in-flight messages finish and settle."""
        self.paused = True
        self._resumed.clear()
        if self.state is ConsumerState.RUNNING:
            self._set_state(ConsumerState.PAUSED)

    def resume(self) -> None:
        """Fetch again."""
        self.paused = False
        self._resumed.set()
        if self.state is ConsumerState.PAUSED:
            self._set_state(ConsumerState.RUNNING)

    def set_concurrency(self, concurrency: int) -> None:
        """Change the number of workers now; messages in flight are unaffected."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        if self._executor is not None:
            old, self._executor = self._executor, None
            old.shutdown(wait=False)
        if self._session is not None:
            self._session.set_concurrency(concurrency, self.max_inflight)

    async def lag(self) -> Lag | None:
        """The group's backlog, or ``None`` when not connected or not known."""
        session = self._session
        if session is None:
            return None
        try:
            return await session.lag()
        except BrokerError:
            return None

    def _replace_thread_pool(self) -> None:
        """A timed-out sync handler keeps its thread: give new calls fresh threads."""
        self.stats.abandoned_threads += 1
        log.warning(
            "consumer %s: a sync handler timed out and its thread runs on "
            "(%d so far); new calls get a fresh thread pool",
            self.name,
            self.stats.abandoned_threads,
        )
        if self._executor is not None:
            old, self._executor = self._executor, None
            old.shutdown(wait=False)

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix=f"millstream-{self.name}"
            )
        return self._executor

    def _set_state(self, state: ConsumerState) -> None:
        if state is not self.state:
            log.info("consumer %s: %s -> %s", self.name, self.state.value, state.value)
            self.state = state
        if state is not ConsumerState.STARTING:
            self._settled_first.set()

    async def _supervise(self) -> None:
        spec = self.spec
        backoff = RetryPolicy(
            attempts=1_000_000,
            backoff=self.settings.reconnect_backoff,
            max_backoff=self.settings.reconnect_max_backoff,
            jitter=0.5,
        )
        failures = 0
        while not self._stopping.is_set():
            try:
                if failures:
                    await self.broker.connect()  # reconnect after a failure
                subscription = await self.broker.subscribe(
                    spec.topic, spec.group, prefetch=self.prefetch, member=self.member
                )
                self._session = self._session_for(subscription)
                self._set_state(ConsumerState.PAUSED if self.paused else ConsumerState.RUNNING)
                await self._session.run(self._stopping)
            except (AuthenticationError, ConfigError) as exc:
                # Refused credentials or a wrong address: retrying cannot help.
                self.stats.last_error = str(exc)
                self.stats.last_failure = Failure.of(exc, "session")
                log.error("consumer %s: not retrying: %s", self.name, exc)
                self._set_state(ConsumerState.FAILED)
                return
            except Exception as exc:
                # Backoff starts over only after a session that got outcomes
                # through; one that fails before that keeps backing off.
                progressed = self._session is not None and self._session.proved_itself(
                    self.settings.reconnect_max_backoff
                )
                failures = 1 if progressed else failures + 1
                self.stats.reconnects += 1
                self.stats.last_error = str(exc)
                self.stats.last_failure = Failure.of(exc, "session")
                delay = backoff.delay(failures)
                if isinstance(exc, BrokerError):
                    log.warning(
                        "consumer %s: broker connection lost (%s); reconnecting in %.2fs",
                        self.name,
                        exc,
                        delay,
                    )
                else:
                    log.exception(
                        "consumer %s: unexpected error; restarting in %.2fs", self.name, delay
                    )
                self._set_state(ConsumerState.RECONNECTING)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
            finally:
                if self._session is not None:
                    self._taken_over += self._session.taken_over
                self._session = None

    def _session_for(self, subscription: Subscription) -> Session:
        settings = self.settings
        limits = Limits(
            concurrency=self.concurrency,
            max_inflight=self.max_inflight,
            prefetch=self.prefetch,
            poll_timeout=settings.poll_timeout,
            settle_batch=settings.settle_batch,
            settle_interval=settings.settle_interval,
            drain_timeout=settings.drain_timeout,
        )
        return Session(
            subscription,
            name=self.name,
            invoke=self.invoke,
            key_of=self.key_of,
            retry=self.retry,
            limits=limits,
            stats=self.stats,
            uncounted=self.uncounted,
            resumed=self._resumed,
        )
