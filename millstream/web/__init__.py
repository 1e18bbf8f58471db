"""FastAPI integration: lifespan, health, metrics, admin and dead-letter routes, middleware.

``ms.fastapi()`` builds a complete app; ``ms.lifespan`` and ``ms.router``
serve users who compose their own (plain Starlette works too).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from millstream.app import Millstream
from millstream.errors import BrokerError
from millstream.web.admin import admin_router
from millstream.web.health import health_router
from millstream.web.middleware import (
    BodyLimitMiddleware,
    RateLimitMiddleware,
    RequestLogMiddleware,
)
from millstream.web.service import Service

__all__ = ["Service", "api_group", "create_app", "install", "service_router"]

# Paths never rate limited: probes and scrapes must always get through.
_UNLIMITED = ("/health", "/actuator", "/metrics")


def service_router(service: Service) -> APIRouter:
    """Health, metrics and admin routes of ``service``."""
    router = APIRouter()
    router.include_router(health_router(service))
    router.include_router(admin_router(service))
    return router


def install(app: FastAPI, service: Service) -> None:
    """Add millstream's middleware and error handling to ``app``."""
    settings = service.settings
    app.state.millstream = service
    app.add_exception_handler(BrokerError, _broker_unavailable)
    if settings.rate_limit is not None:
        app.add_middleware(
            RateLimitMiddleware,
            rate=settings.rate_limit,
            burst=settings.rate_limit_burst,
            prefixes=_limited_prefixes(app),
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestLogMiddleware)
    _instrument_http(app, service)


def create_app(ms: Millstream, app: FastAPI | None = None, **fastapi: Any) -> FastAPI:
    """A FastAPI app running ``ms``: lifespan, routes and middleware.

    Given an existing ``app`` (created with ``lifespan=ms.lifespan``, or
    without a lifespan), adds the routes and middleware to it.
    """
    service = ms.web
    if app is None:
        fastapi.setdefault("title", "millstream service")
        app = FastAPI(lifespan=service.lifespan, **fastapi)
    app.include_router(service.router)
    install(app, service)
    return app


def api_group(ms: Millstream, version: int = 1, *, auth: bool = False, **router: Any) -> APIRouter:
    """A versioned route group ``/api/v{version}``, optionally behind bearer auth."""
    dependencies = list(router.pop("dependencies", []))
    if auth:
        dependencies.append(Depends(ms.web.auth))
    return APIRouter(prefix=f"/api/v{version}", dependencies=dependencies, **router)


def _limited_prefixes(app: FastAPI) -> tuple[str, ...]:
    return ("/api", "/admin")


async def _broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"the broker is unavailable: {exc}"},
        status_code=503,
        headers={"retry-after": "1"},
    )


def _instrument_http(app: FastAPI, service: Service) -> None:
    from prometheus_fastapi_instrumentator import Instrumentator

    Instrumentator(
        registry=service.metrics.registry,
        excluded_handlers=["/metrics"],
        should_group_untemplated=True,
    ).instrument(app, metric_namespace="millstream")
