"""The console demo: an order service fed simulated payment events, some of them poison.

A simulator publishes payment events for orders at a steady rate. One
consumer keeps each order's status in a dict. A few events are poison on
purpose, so the dashboard has something to show besides acks:

- an unknown status: the handler raises ``FatalError``, dead at once;
- bytes that are not a ``Payment``: decoding fails, dead at once;
- a flaky payment gateway: the first one or two attempts fail with
  ``RetryableError`` and a retry succeeds;
- a gateway that never answers: retried until the attempts run out, then dead.

``millstream demo`` runs :func:`run_demo`; everything else here is the
service it drives, usable from a test or a notebook on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table

from millstream.app import Millstream
from millstream.brokers.base import DeadLetter
from millstream.errors import BrokerError, FatalError, RetryableError
from millstream.message import Message
from millstream.retry import Retry
from millstream.runtime.consumer import ConsumerRuntime

__all__ = [
    "CONSUMER",
    "GROUP",
    "STATUSES",
    "TOPIC",
    "DemoSnapshot",
    "OrderBook",
    "Payment",
    "PaymentSimulator",
    "PaymentsDemo",
    "SimulatedEvent",
    "render",
    "run_demo",
    "summary",
]

TOPIC = "payments"
GROUP = "orders"
CONSUMER = "payments"
STATUSES = ("authorized", "captured", "refunded", "failed")
_STAGE = {"authorized": 1, "failed": 1, "captured": 2, "refunded": 3}
GATEWAY_FAILURES = "demo-gateway-failures"
"""Header telling the handler how many attempts the simulated gateway fails."""

_TICK = 0.05  # seconds between simulator batches
_REFRESH = 0.25  # seconds between dashboard updates
_NEWEST_DEAD = 5


class Payment(BaseModel):
    """One payment event of an order."""

    order_id: str
    status: str
    amount: Decimal


class OrderBook:
    """The service's state: each order's latest payment status."""

    def __init__(self) -> None:
        self.orders: dict[str, str] = {}

    def apply(self, payment: Payment) -> None:
        """Record ``payment``; an unknown status can never be applied, so it is fatal.

        A retried payment can arrive after a later one of its order, so a
        status never moves an order back (captured does not undo refunded).
        """
        stage = _STAGE.get(payment.status)
        if stage is None:
            raise FatalError(
                f"order {payment.order_id}: unknown payment status {payment.status!r}; "
                f"expected one of {', '.join(STATUSES)}"
            )
        current = self.orders.get(payment.order_id)
        if current is None or _STAGE[current] <= stage:
            self.orders[payment.order_id] = payment.status

    def by_status(self) -> dict[str, int]:
        """How many orders are in each status."""
        counts = Counter(self.orders.values())
        return {status: counts.get(status, 0) for status in STATUSES}


def payment_handler(book: OrderBook) -> Callable[[Payment, Message], Awaitable[None]]:
    """The consumer's handler: call the (simulated) gateway, then update ``book``."""

    async def handle_payment(payment: Payment, msg: Message) -> None:
        gateway_failures = int(msg.headers.get(GATEWAY_FAILURES, "0"))
        if msg.attempt <= gateway_failures:
            raise RetryableError(f"payment gateway timed out (attempt {msg.attempt})")
        book.apply(payment)

    return handle_payment


@dataclass(frozen=True, slots=True)
class SimulatedEvent:
    """What the simulator publishes: a payment (or raw bytes) and how flaky its gateway is."""

    value: Payment | bytes
    gateway_failures: int = 0

    @property
    def special(self) -> bool:
        """Published on its own: raw bytes, or with a header for the gateway."""
        return isinstance(self.value, bytes) or self.gateway_failures > 0

    @property
    def key(self) -> str | None:
        return self.value.order_id if isinstance(self.value, Payment) else None


_UNDECODABLE = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b'{"order_id": "ord-?", "status": "captured", "amount": ',
)


class PaymentSimulator:
    """Deterministic payment traffic: orders are authorized (or declined), captured, refunded.

    Of every 50 events, one has an unknown status, one is undecodable bytes
    and two meet a flaky gateway; one in 100 meets a gateway that never answers.
    """

    def __init__(self, seed: int = 7) -> None:
        self._rng = random.Random(seed)
        self._count = 0
        self._orders = 0
        self._open: deque[tuple[str, str, Decimal]] = deque()

    def take(self, count: int) -> list[SimulatedEvent]:
        """The next ``count`` events."""
        return [self._next() for _ in range(count)]

    def _next(self) -> SimulatedEvent:
        self._count += 1
        slot = self._count % 50
        if slot == 7:
            return SimulatedEvent(self._new_order("chargeback"))
        if slot == 19:
            return SimulatedEvent(_UNDECODABLE[(self._count // 50) % len(_UNDECODABLE)])
        if slot in (3, 28):
            return SimulatedEvent(self._payment(), gateway_failures=1 + (self._count // 50) % 2)
        if self._count % 100 == 41:
            return SimulatedEvent(self._payment(), gateway_failures=99)
        return SimulatedEvent(self._payment())

    def _payment(self) -> Payment:
        rng = self._rng
        if self._open and rng.random() < 0.5:
            order_id, status, amount = self._open.popleft()
            following = "captured" if status == "authorized" else "refunded"
            if following == "captured" and rng.random() < 0.2:
                self._open.append((order_id, following, amount))
            return Payment(order_id=order_id, status=following, amount=amount)
        declined = rng.random() < 0.1
        return self._new_order("failed" if declined else "authorized")

    def _new_order(self, status: str) -> Payment:
        self._orders += 1
        order_id = f"ord-{self._orders:05d}"
        amount = Decimal(self._rng.randrange(500, 50_000)) / 100
        if status == "authorized":
            self._open.append((order_id, status, amount))
        return Payment(order_id=order_id, status=status, amount=amount)


@dataclass(frozen=True, slots=True)
class DemoSnapshot:
    """The numbers the dashboard shows at one moment."""

    elapsed: float = 0.0
    published: int = 0
    consumed: int = 0
    acked: int = 0
    retried: int = 0
    dead: int = 0
    state: str = "STARTING"
    lag: int | None = None
    orders: dict[str, int] = field(default_factory=dict)
    dead_letters: tuple[DeadLetter, ...] = ()


class PaymentsDemo:
    """The demo service: a ``Millstream`` with one payments consumer, and its simulator."""

    def __init__(self, broker_url: str | None = None, *, rate: float = 100.0) -> None:
        self.ms = Millstream(broker_url, drain_timeout=5.0)
        self.book = OrderBook()
        self.simulator = PaymentSimulator()
        self.rate = rate
        self.published = 0
        self._started = time.monotonic()
        self._consumer: ConsumerRuntime | None = None
        self.ms.consumer(
            TOPIC,
            group=GROUP,
            name=CONSUMER,
            concurrency=8,
            key="order_id",
            retry=Retry(attempts=4, backoff=0.2, max_backoff=2.0),
        )(payment_handler(self.book))

    async def publish_for(self, duration: float | None) -> None:
        """Publish at ``rate`` per second for ``duration`` seconds (``None``: until cancelled)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = None if duration is None else start + duration
        burst = max(1, int(self.rate))  # catch up at most one second's worth per tick
        while end is None or loop.time() < end:
            due = int((loop.time() - start) * self.rate) - self.published
            if due > 0:
                await self._publish(self.simulator.take(min(due, burst)))
            await asyncio.sleep(_TICK)

    async def _publish(self, events: Sequence[SimulatedEvent]) -> None:
        # In event order, so an order's payments reach the broker in the order they happened.
        for special, run in itertools.groupby(events, key=lambda e: e.special):
            if not special:
                await self.ms.publish_batch(TOPIC, [e.value for e in run], key_by="order_id")
                continue
            for event in run:
                failures = event.gateway_failures
                headers = {GATEWAY_FAILURES: str(failures)} if failures else None
                await self.ms.publish(TOPIC, event.value, key=event.key, headers=headers)
        self.published += len(events)

    async def snapshot(self, previous: DemoSnapshot, *, ask_broker: bool = True) -> DemoSnapshot:
        """The current numbers; what the broker cannot tell now is kept from ``previous``."""
        consumer = self._consumer = self.ms.consumers.get(CONSUMER, self._consumer)
        lag, letters = previous.lag, previous.dead_letters
        if ask_broker and consumer is not None:
            try:
                lag_now = await consumer.lag()
                lag = None if lag_now is None else lag_now.total
                queue = await self.ms.dead_letters(TOPIC, GROUP)
                letters = tuple(await queue.list(limit=_NEWEST_DEAD))
            except BrokerError:
                pass
        stats = consumer.stats if consumer is not None else None
        return DemoSnapshot(
            elapsed=time.monotonic() - self._started,
            published=self.published,
            consumed=stats.consumed if stats else 0,
            acked=stats.acked if stats else 0,
            retried=stats.retried if stats else 0,
            dead=stats.dead if stats else 0,
            state=consumer.state.value if consumer is not None else "STARTING",
            lag=lag,
            orders=self.book.by_status(),
            dead_letters=letters,
        )


async def run_demo(
    broker_url: str | None, *, rate: float, duration: float | None, console: Console
) -> DemoSnapshot:
    """Run the demo with a live dashboard on ``console`` until ``duration`` or SIGINT/SIGTERM.

    Stopping is graceful: publishing stops, in-flight messages finish and
    settle, then the broker closes. Returns the final numbers.
    """
    demo = PaymentsDemo(broker_url, rate=rate)
    publishing = demo.publish_for(duration)
    serving = asyncio.ensure_future(demo.ms.serve(until=publishing))
    snapshot = DemoSnapshot()
    try:
        with Live(render(snapshot), console=console, redirect_stderr=True) as live:
            while not serving.done():
                await asyncio.wait({serving}, timeout=_REFRESH)
                snapshot = await demo.snapshot(snapshot, ask_broker=not serving.done())
                live.update(render(snapshot))
        if not console.is_terminal:
            console.line()  # a live display that is not on a terminal ends mid-line
        await serving
    finally:
        publishing.close()  # never started if the broker could not be reached
    return snapshot


def render(snapshot: DemoSnapshot) -> RenderableType:
    """The dashboard: message counts, orders by status, and the newest dead letters."""
    counts = Table(title="messages", show_header=False, min_width=28)
    counts.add_column(justify="left")
    counts.add_column(justify="right")
    lag = "?" if snapshot.lag is None else f"{snapshot.lag:,}"
    for label, value in (
        ("published", f"{snapshot.published:,}"),
        ("consumed", f"{snapshot.consumed:,}"),
        ("acked", f"[green]{snapshot.acked:,}[/]"),
        ("retried", f"[yellow]{snapshot.retried:,}[/]"),
        ("dead-lettered", f"[red]{snapshot.dead:,}[/]"),
        ("consumer", snapshot.state),
        ("lag", lag),
    ):
        counts.add_row(label, value)
    orders = Table(title="orders by status", show_header=False, min_width=24)
    orders.add_column()
    orders.add_column(justify="right")
    for status, count in snapshot.orders.items():
        orders.add_row(status, f"{count:,}")
    top = Table.grid(padding=(0, 2))
    top.add_row(counts, orders)
    dead = Table(title="newest dead letters", expand=True)
    dead.add_column("failed at", no_wrap=True)
    dead.add_column("attempts", justify="right")
    dead.add_column("reason", overflow="ellipsis", no_wrap=True, ratio=1)
    for letter in snapshot.dead_letters:
        failed_at = datetime.fromtimestamp(letter.failed_at).strftime("%H:%M:%S")
        dead.add_row(failed_at, str(letter.attempts), letter.error)
    running = snapshot.state not in ("STOPPED", "FAILED")
    hint = "Ctrl-C stops gracefully" if running else "stopped"
    footer = f"[dim]{snapshot.elapsed:.1f}s · {hint}[/]"
    return Group(top, dead, footer)


def summary(snapshot: DemoSnapshot) -> str:
    """One line of final counts, e.g. for the end of a run."""
    orders = ", ".join(f"{status} {count}" for status, count in snapshot.orders.items())
    return (
        f"published {snapshot.published}, consumed {snapshot.consumed}, "
        f"acked {snapshot.acked}, retried {snapshot.retried}, "
        f"dead-lettered {snapshot.dead} in {snapshot.elapsed:.1f}s; orders: {orders}"
    )
