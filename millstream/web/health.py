"""``/health/live``, ``/health/ready``, ``/health/consumers``, ``/actuator/health``, ``/metrics``.

The rules are in :mod:`millstream.observability.health`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from millstream.web.service import Service

__all__ = ["health_router"]


def health_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health/live", summary="The process and its event loop answer")
    async def live() -> dict[str, Any]:
        return {"status": "UP", "eventLoopLagMs": service.loop_lag_ms()}

    @router.get(
        "/health/ready",
        summary="Started, the store answers, not shutting down: send HTTP traffic",
        responses={503: {"description": "Not ready, or shutting down"}},
    )
    async def ready() -> JSONResponse:
        health = await service.health()
        return _answer({"status": health.readiness})

    @router.get(
        "/health/consumers",
        summary="The broker answers and every consumer runs",
        responses={503: {"description": "The broker or a consumer is down, or shutting down"}},
    )
    async def consumers() -> JSONResponse:
        health = await service.health()
        body = {
            "status": health.consumers,
            "broker": health.broker_status(),
            "consumers": health.consumer_statuses(),
        }
        return _answer(body)

    @router.get(
        "/actuator/health",
        summary="Every component's status with details",
        responses={503: {"description": "Some component is DOWN"}},
    )
    async def actuator() -> JSONResponse:
        health = await service.health()
        return _answer(health.document())

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        await service.health()  # refreshes the lag readings the scrape reports
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


def _answer(body: dict[str, Any]) -> JSONResponse:
    """``body`` with 200 when its status is UP, else 503."""
    return JSONResponse(body, status_code=200 if body["status"] == "UP" else 503)
