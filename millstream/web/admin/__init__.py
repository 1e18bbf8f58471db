"""The admin API, behind bearer auth: consumers, their dead letters, and the service.

Every operator action (pause, resume, concurrency, replay, purge) is logged
at INFO on ``millstream.web.admin`` with the subject (``sub``) of the token
that did it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status

from millstream.runtime.consumer import ConsumerRuntime
from millstream.web.admin.consumers import consumer_routes
from millstream.web.admin.letters import SCAN_BOUND, letter_routes
from millstream.web.admin.service_info import service_routes
from millstream.web.errors import middleware_responses
from millstream.web.service import Service

__all__ = ["SCAN_BOUND", "admin_router"]


def admin_router(service: Service) -> APIRouter:
    """``/admin``, behind bearer auth: the consumers, their dead letters, the service."""
    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        dependencies=[Depends(service.auth)],
        responses={
            401: {"description": "Missing or invalid bearer token"},
            **middleware_responses(service.settings),
        },
    )

    def consumer(name: str) -> ConsumerRuntime:
        found = service.ms.consumers.get(name)
        if found is None:
            known = ", ".join(sorted(service.ms.consumers)) or "none"
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"no consumer named {name!r}; known: {known}"
            )
        return found

    by_name: Any = Depends(consumer)
    consumer_routes(router, service, by_name)
    letter_routes(router, service, by_name)
    service_routes(router, service)
    return router
