"""``/admin/consumers``: state, counters, lag and last error; throughput history; controls."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status

from millstream.errors import BrokerError
from millstream.observability.health import collect
from millstream.runtime.consumer import ConsumerRuntime
from millstream.web.admin.common import CONFLICT, acted, require_active
from millstream.web.admin.models import (
    ConcurrencyChange,
    ConsumerView,
    HistoryView,
    LastErrorView,
    SeriesView,
)
from millstream.web.service import Service

__all__ = ["consumer_routes"]

_ANSWER_WITHIN = 1.0  # seconds a broker gets to tell a lag or a dead-letter count


def consumer_routes(router: APIRouter, service: Service, by_name: Any) -> None:
    operator: Any = Depends(service.auth)

    @router.get("/consumers", summary="Every consumer with its state, counters, lag and last error")
    async def consumers() -> list[ConsumerView]:
        """Lag and dead-letter counts are asked of the broker for all consumers at once;
        one it does not answer within a second is null."""
        return await _views(service, list(service.ms.consumers.values()))

    @router.get(
        "/consumers/history",
        summary="Each consumer's consumed, acked, retried and dead-lettered counts per bucket",
    )
    async def history(
        since: Annotated[
            float | None,
            Query(description="only buckets that ended after this time (Unix seconds)"),
        ] = None,
    ) -> HistoryView:
        """Sampled from the consumers' counters once per bucket (5 s) while the service
        runs; the newest 10 minutes are kept, in memory, so a restart starts afresh."""
        kept = service.history
        samples = [s for s in kept.samples if since is None or s.at > since]
        names = list(service.ms.consumers)
        series = {name: SeriesView(consumed=[], acked=[], retried=[], dead=[]) for name in names}
        for sample in samples:
            for name in names:
                counts = sample.counts.get(name)
                one = series[name]
                one.consumed.append(counts.consumed if counts else 0)
                one.acked.append(counts.acked if counts else 0)
                one.retried.append(counts.retried if counts else 0)
                one.dead.append(counts.dead if counts else 0)
        return HistoryView(
            bucket_seconds=kept.bucket,
            window_seconds=kept.window,
            at=[sample.at for sample in samples],
            consumers=series,
        )

    @router.post("/consumers/{name}/pause", responses=CONFLICT, summary="Stop fetching")
    async def pause(found: ConsumerRuntime = by_name, claims: Any = operator) -> ConsumerView:
        if found.paused:
            raise HTTPException(status.HTTP_409_CONFLICT, f"consumer {found.name!r} is paused")
        require_active(found)
        found.pause()
        acted(claims, "paused consumer %r", found.name)
        return await _view(service, found)

    @router.post("/consumers/{name}/resume", responses=CONFLICT, summary="Fetch again")
    async def resume(found: ConsumerRuntime = by_name, claims: Any = operator) -> ConsumerView:
        if not found.paused:
            raise HTTPException(status.HTTP_409_CONFLICT, f"consumer {found.name!r} is not paused")
        require_active(found)
        found.resume()
        acted(claims, "resumed consumer %r", found.name)
        return await _view(service, found)

    @router.put("/consumers/{name}/concurrency", responses=CONFLICT, summary="Resize workers")
    async def concurrency(
        change: ConcurrencyChange, found: ConsumerRuntime = by_name, claims: Any = operator
    ) -> ConsumerView:
        require_active(found)
        before = found.concurrency
        found.set_concurrency(change.concurrency)
        acted(claims, "set consumer %r concurrency %d -> %d", found.name, before, found.concurrency)
        return await _view(service, found)


async def _view(service: Service, consumer: ConsumerRuntime) -> ConsumerView:
    [view] = await _views(service, [consumer])
    return view


LETTER_COUNT_TTL = 15.0
"""Seconds a consumer's dead-letter count in the consumers list is reused."""


async def _views(service: Service, consumers: list[ConsumerRuntime]) -> list[ConsumerView]:
    counted = service.letter_counts

    async def letters(consumer: ConsumerRuntime) -> int | None:
        now, buried = time.monotonic(), consumer.stats.dead
        at, seen, count = counted.get(consumer.name, (-math.inf, buried, 0))
        if now - at < LETTER_COUNT_TTL and seen == buried:  # none buried here since
            return count
        with contextlib.suppress(TimeoutError, BrokerError):
            async with asyncio.timeout(_ANSWER_WITHIN):
                queue = await service.ms.dead_letters(consumer.spec.topic, consumer.spec.group)
                count = await queue.count()
                counted[consumer.name] = (now, buried, count)
                return count
        return None

    reports, counts = await asyncio.gather(
        collect(consumers, _ANSWER_WITHIN), asyncio.gather(*(letters(c) for c in consumers))
    )
    views = []
    for report, count in zip(reports, counts, strict=True):
        consumer, stats = report.consumer, report.consumer.stats
        failure = stats.last_failure
        views.append(
            ConsumerView(
                name=consumer.name,
                topic=consumer.spec.topic,
                group=consumer.spec.group,
                state=consumer.state.value,
                concurrency=consumer.concurrency,
                inflight=consumer.inflight,
                consumed=stats.consumed,
                acked=stats.acked,
                retried=stats.retried,
                dead=stats.dead,
                reconnects=stats.reconnects,
                lag=report.lag.total if report.lag is not None else None,
                dead_letters=count,
                last_error=None
                if failure is None
                else LastErrorView(
                    type=failure.error_type,
                    message=failure.message,
                    at=failure.at,
                    source=failure.source,
                ),
            )
        )
    return views
