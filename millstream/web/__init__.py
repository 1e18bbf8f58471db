"""FastAPI integration: lifespan, health, metrics, admin and dead-letter routes, middleware.

``ms.fastapi()`` builds a complete app; ``ms.lifespan`` and ``ms.router``
serve users who compose their own (plain Starlette works too).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.types import Lifespan, Receive, Scope, Send

from millstream.web.admin import admin_router
from millstream.web.asyncapi import asyncapi_router
from millstream.web.console import console_router
from millstream.web.errors import install_error_handlers, middleware_responses
from millstream.web.health import health_router
from millstream.web.middleware import (
    BodyLimitMiddleware,
    CloseWhenDrainingMiddleware,
    RateLimitMiddleware,
    RequestLogMiddleware,
)
from millstream.web.service import Served, Service

__all__ = [
    "Served",
    "Service",
    "ServiceRouter",
    "api_group",
    "create_app",
    "install",
    "service_router",
    "worker_app",
]


LIMITED_PREFIXES = ("/api", "/admin")
"""The paths the rate limit covers: the service's API groups and the admin API."""


class ServiceRouter(APIRouter):
    """The service's routes: included by FastAPI apps, mountable in plain Starlette.

    FastAPI's routes need FastAPI's request plumbing (exception handlers
    answering 422 and 401, its per-request exit stacks), which a Starlette
    app does not have. Mounted as an ASGI app (``Mount("/", app=ms.router)``),
    the router therefore answers through a small FastAPI app of its own.
    """

    def __init__(self) -> None:
        super().__init__()
        self._standalone: FastAPI | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._standalone is None:
            standalone = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
            standalone.include_router(self)
            install_error_handlers(standalone)
            self._standalone = standalone
        await self._standalone(scope, receive, send)


def service_router(service: Service) -> APIRouter:
    """Health, metrics and admin routes of ``service``."""
    router = ServiceRouter()
    router.include_router(health_router(service))
    router.include_router(admin_router(service))
    router.include_router(console_router())
    router.include_router(asyncapi_router(service))
    return router


def install(app: FastAPI, service: Service) -> None:
    """Add millstream's middleware and error handling to ``app``."""
    settings = service.settings
    app.state.millstream = service
    install_error_handlers(app)
    if settings.rate_limit is not None:
        app.add_middleware(
            RateLimitMiddleware,
            rate=settings.rate_limit,
            burst=settings.rate_limit_burst,
            prefixes=LIMITED_PREFIXES,
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(CloseWhenDrainingMiddleware, draining=lambda: service.draining)
    app.add_middleware(RequestLogMiddleware)
    # Outermost: the server span is current for everything below, so a
    # request that publishes and the consumer of that message share a trace.
    app.add_middleware(OpenTelemetryMiddleware)
    _instrument_http(app, service)


def create_app(ms: Served, app: FastAPI | None = None, **fastapi: Any) -> FastAPI:
    """A FastAPI app running ``ms``: lifespan, routes and middleware.

    Given an existing ``app``, adds the routes and middleware to it and
    makes its lifespan run the consumers: as it is if it was created with
    ``lifespan=ms.lifespan``, otherwise inside the lifespan it has.
    """
    service = ms.web
    if app is None:
        fastapi.setdefault("title", "millstream service")
        app = FastAPI(lifespan=service.lifespan, **fastapi)
    elif not _runs(app.router.lifespan_context, service):
        app.router.lifespan_context = _AroundLifespan(app.router.lifespan_context, service)
    app.include_router(service.router)
    install(app, service)
    return app


def worker_app(ms: Served) -> FastAPI:
    """The face of a worker: the consumers run in its lifespan and only health and metrics
    are served (``millstream worker``), for deployments that scale consumers apart from HTTP.
    """
    service = ms.web
    app = FastAPI(
        title="millstream worker", lifespan=service.lifespan, docs_url=None, redoc_url=None
    )
    app.include_router(health_router(service))
    app.state.millstream = service
    install_error_handlers(app)
    return app


def api_group(ms: Served, version: int = 1, *, auth: bool = False, **router: Any) -> APIRouter:
    """A versioned route group ``/api/v{version}``, optionally behind bearer auth.

    Its routes document what the middleware and the auth may answer
    (413, 429 when rate limited, 401 behind auth) beside their own responses.
    """
    dependencies = list(router.pop("dependencies", []))
    responses = {**middleware_responses(ms.settings), **router.pop("responses", {})}
    if auth:
        dependencies.append(Depends(ms.web.auth))
        responses.setdefault(401, {"description": "Missing or invalid bearer token"})
    return APIRouter(
        prefix=f"/api/v{version}", dependencies=dependencies, responses=responses, **router
    )


class _AroundLifespan:
    """An app's own lifespan with the consumers running inside it.

    The app's lifespan is the outer one: what it opens (a database pool, a
    client) is there before the first message is handled and still there
    while the last one drains.
    """

    def __init__(self, outer: Lifespan[Any], service: Service) -> None:
        self.outer = outer
        self.service = service

    @contextlib.asynccontextmanager
    async def __call__(self, app: Any) -> AsyncIterator[Any]:
        async with self.outer(app) as state, self.service.lifespan(app):
            yield state


def _runs(lifespan: Lifespan[Any], service: Service) -> bool:
    """Whether ``lifespan`` already starts and stops ``service``'s consumers."""
    if isinstance(lifespan, _AroundLifespan):
        return lifespan.service is service
    return bool(lifespan == service.lifespan)


def _instrument_http(app: FastAPI, service: Service) -> None:
    from prometheus_fastapi_instrumentator import Instrumentator

    # Exact status codes: a 401, a 404 and a 429 call for different responses.
    Instrumentator(
        registry=service.metrics.registry,
        excluded_handlers=["/metrics"],
        should_group_status_codes=False,
        should_group_untemplated=True,
    ).instrument(app, metric_namespace="millstream")
