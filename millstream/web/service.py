"""``Service``: what the web layer adds to a ``Millstream``, shared by its routes.

One per ``Millstream`` (``ms.web``). It instruments the app before it
starts, runs it inside an ASGI lifespan, and knows whether the service is
draining so readiness can turn DOWN the moment shutdown begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from millstream.app import Millstream
from millstream.observability import tracing
from millstream.observability.health import Health, check_store, collect
from millstream.observability.metrics import Metrics
from millstream.urls import redact
from millstream.web.auth import BearerAuth

__all__ = ["Service"]

log = logging.getLogger("millstream.web")


class Service:
    """Health, metrics, auth and lifecycle of one ``Millstream`` behind HTTP."""

    def __init__(self, ms: Millstream) -> None:
        self.ms = ms
        self.settings = ms.settings
        self.metrics = Metrics()
        self.metrics.instrument(ms)
        tracing.instrument(ms)
        self.auth = BearerAuth(ms.settings)
        self.draining = False
        self._watcher: asyncio.Task[None] | None = None
        from millstream.web import service_router

        self.router = service_router(self)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Start the consumers with the server; drain them when it shuts down."""
        self.draining = False
        await self.ms.start()
        self._watcher = asyncio.create_task(self.metrics.watch_loop(), name="millstream:loop-lag")
        try:
            yield
        finally:
            self.begin_shutdown()
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            await self.ms.stop()

    def begin_shutdown(self) -> None:
        """Readiness answers 503 from now on."""
        if not self.draining:
            log.info("shutting down: readiness is DOWN, draining consumers")
        self.draining = True

    async def health(self) -> Health:
        # Only while started: a stopped app's store is closed, and a query would reopen it.
        store = self.ms.opened_store if self.ms.started else None
        reports, store_report = await asyncio.gather(
            collect(list(self.ms.consumers.values())),
            check_store(store, redact(store.url)) if store is not None else _none(),
        )
        self.metrics.remember(reports, store_report)
        return Health(
            broker_url=redact(self.ms.broker.url),
            started=self.ms.started,
            draining=self.draining,
            reports=reports,
            max_lag=self.settings.health_max_lag,
            store=store_report,
        )

    def loop_lag_ms(self) -> float:
        return round(self.metrics.last_loop_lag * 1000, 3)


async def _none() -> None:
    return None
