"""``/asyncapi.json``, ``/asyncapi.yaml`` and ``/asyncapi``: the service's AsyncAPI document.

Open like ``/docs`` and ``/openapi.json``: it shows topics, groups, message
schemas and the broker's address without its credentials, no more than the
OpenAPI schema and ``/actuator/health`` already do. The document is built
per request from what the app declares (a few milliseconds); its title,
version and description are those of the FastAPI app serving it, as in its
OpenAPI schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from millstream.app.asyncapi import Format, asyncapi_document, render
from millstream.web.asyncapi_page import page
from millstream.web.service import Service

__all__ = ["asyncapi_router"]

YAML = "application/yaml"


def asyncapi_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["asyncapi"])

    def document(request: Request) -> dict[str, Any]:
        app = request.app
        named = getattr(getattr(app, "state", None), "millstream", None) is service
        return asyncapi_document(
            service.ms,
            title=app.title if named else None,
            version=app.version if named else None,
            description=(app.description or "") if named else "",
        )

    @router.get(
        "/asyncapi.json",
        summary="The service's AsyncAPI 3.0 document, as JSON",
        response_class=Response,
        responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}},
    )
    async def asyncapi_json(request: Request) -> Response:
        return Response(render(document(request), Format.JSON), media_type="application/json")

    @router.get(
        "/asyncapi.yaml",
        summary="The service's AsyncAPI 3.0 document, as YAML",
        response_class=Response,
        responses={200: {"content": {YAML: {"schema": {"type": "object"}}}}},
    )
    async def asyncapi_yaml(request: Request) -> Response:
        return Response(render(document(request), Format.YAML), media_type=YAML)

    @router.get(
        "/asyncapi",
        summary="The service's AsyncAPI document as a page: servers, channels, operations, "
        "messages",
        response_class=HTMLResponse,
    )
    async def asyncapi_html(request: Request) -> HTMLResponse:
        return HTMLResponse(page(document(request)))

    return router
