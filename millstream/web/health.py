"""``/health/live``, ``/health/ready``, ``/actuator/health`` and ``/metrics``."""

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
        summary="Broker reachable and every consumer running",
        responses={503: {"description": "Not ready, or shutting down"}},
    )
    async def ready() -> JSONResponse:
        health = await service.health()
        body = {"status": health.status}
        return JSONResponse(body, status_code=200 if health.ready else 503)

    @router.get(
        "/actuator/health",
        summary="Every component's status with details",
        responses={503: {"description": "Some component is DOWN"}},
    )
    async def actuator() -> JSONResponse:
        health = await service.health()
        return JSONResponse(health.document(), status_code=200 if health.ready else 503)

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        await service.health()  # refreshes the lag readings the scrape reports
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
