"""``/admin/service``: what the console's service view shows that no other JSON route has."""

from __future__ import annotations

from fastapi import APIRouter

from millstream.urls import redact
from millstream.version import __version__
from millstream.web.admin.models import CacheView, OutboxView, ServiceView
from millstream.web.service import Service

__all__ = ["service_routes"]


def service_routes(router: APIRouter, service: Service) -> None:
    @router.get(
        "/service",
        summary="Version, broker, event-loop lag, outbox relay and read caches",
    )
    async def about() -> ServiceView:
        """Health (broker, store, outbox backlog, consumers) is ``/actuator/health``; this
        adds what only ``/metrics`` tells, as JSON."""
        ms = service.ms
        relay = ms.relay
        outbox = None
        if relay is not None:
            stats = relay.stats
            outbox = OutboxView(
                published=stats.published,
                failed_batches=stats.failed_batches,
                last_error=stats.last_error,
            )
        caches = []
        for cache in ms.caches.values():
            lookups = cache.hits + cache.misses
            caches.append(
                CacheView(
                    name=cache.name,
                    hits=cache.hits,
                    misses=cache.misses,
                    hit_rate=cache.hits / lookups if lookups else None,
                    entries=cache.size,
                )
            )
        return ServiceView(
            version=__version__,
            broker=redact(ms.broker.url),
            member=ms.member,
            started=ms.started,
            draining=service.draining,
            event_loop_lag_ms=service.loop_lag_ms(),
            outbox=outbox,
            caches=caches,
        )
