"""``Service``: what the web layer adds to a ``Millstream``, shared by its routes.

One per ``Millstream`` (``ms.web``). It runs the app inside an ASGI
lifespan, serves the metrics the app keeps, and knows whether the service
is draining so readiness can turn DOWN the moment shutdown begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from millstream.app import App
from millstream.observability.health import Health, check_broker, check_store, collect
from millstream.observability.metrics import Metrics
from millstream.runtime.tasks import cancel_and_wait
from millstream.settings import Settings
from millstream.urls import redact
from millstream.web.auth import BearerAuth
from millstream.web.history import ThroughputHistory

__all__ = ["Served", "Service"]

log = logging.getLogger("millstream.web")


class Service:
    """Health, metrics, auth and lifecycle of one app behind HTTP."""

    def __init__(self, ms: App) -> None:
        self.ms = ms
        self.settings = ms.settings
        self.auth = BearerAuth(ms.settings)
        self.draining = False
        self.history = ThroughputHistory()
        """Each consumer's throughput per bucket, sampled while served (the console's chart)."""
        self.letter_counts: dict[str, tuple[float, int, int]] = {}
        """Each consumer's dead letters as last counted: when (``time.monotonic``), its
        ``stats.dead`` then, and the count. The consumers list asks the broker again only
        when this process buried more, after ``LETTER_COUNT_TTL`` seconds (letters other
        instances buried), or after a replay or purge: counting reads a whole topic on Kafka."""
        from millstream.web import service_router

        self.router = service_router(self)

    @property
    def metrics(self) -> Metrics:
        """The app's metrics, which ``/metrics`` renders."""
        return self.ms.metrics

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Start the consumers with the server; drain them when it shuts down."""
        self.draining = False
        await self.ms.start()
        # Loop lag is the liveness probe's reading, so it is measured while served.
        watchers = [
            asyncio.create_task(self.metrics.watch_loop(), name="millstream:loop-lag"),
            asyncio.create_task(
                self.history.run(lambda: self.ms.consumers), name="millstream:history"
            ),
        ]
        try:
            yield
        finally:
            self.begin_shutdown()
            await cancel_and_wait(*watchers)
            await self.ms.stop()

    def begin_shutdown(self) -> None:
        """Readiness answers 503 from now on."""
        if not self.draining:
            log.info("shutting down: readiness is DOWN, draining consumers")
        self.draining = True

    async def health(self) -> Health:
        # Only while started: a stopped app's store is closed, and a query would reopen it.
        started = self.ms.started
        store = self.ms.opened_store if started else None
        reports, store_report, broker_report = await asyncio.gather(
            collect(list(self.ms.consumers.values())),
            check_store(store, redact(store.url)) if store is not None else _none(),
            check_broker(self.ms.broker) if started else _none(),
        )
        self.metrics.remember(reports, store_report)
        return Health(
            broker_url=redact(self.ms.broker.url),
            started=started,
            draining=self.draining,
            reports=reports,
            max_lag=self.settings.health_max_lag,
            store=store_report,
            broker=broker_report,
            consumers_in_readiness=self.settings.health_ready_consumers,
        )

    def loop_lag_ms(self) -> float:
        return round(self.metrics.last_loop_lag * 1000, 3)


class Served(Protocol):
    """An app with its web face (a ``Millstream``): what ``create_app`` and ``api_group`` take."""

    @property
    def settings(self) -> Settings: ...

    @property
    def web(self) -> Service: ...


async def _none() -> None:
    return None
