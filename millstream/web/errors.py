"""How the web layer answers errors that escape a route: broker outages and unreadable bodies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.exception_handlers import http_exception_handler
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from millstream.errors import BrokerError
from millstream.settings import Settings

__all__ = ["install_error_handlers", "middleware_responses"]

Handler = Callable[[Request, Exception], Awaitable[Response]]


def install_error_handlers(app: Starlette) -> None:
    """503 with ``Retry-After`` when the broker is down; 422 for a body that is not UTF-8."""
    app.add_exception_handler(BrokerError, _broker_unavailable)
    fallback: Handler = app.exception_handlers.get(HTTPException, http_exception_handler)
    app.add_exception_handler(HTTPException, _undecodable_body_is_422(fallback))


def middleware_responses(settings: Settings) -> dict[int | str, dict[str, Any]]:
    """What the middleware may answer on API and admin routes, for their OpenAPI entries.

    The body limit answers 413 on any route; the rate limit 429 where it is on.
    Documented, so clients (and schema checks) expect them.
    """
    responses: dict[int | str, dict[str, Any]] = {
        413: {"description": f"Request body larger than {settings.max_body_bytes} bytes"}
    }
    if settings.rate_limit is not None:
        responses[429] = {"description": "Too many requests; see Retry-After"}
    return responses


async def _broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"the broker is unavailable: {exc}"},
        status_code=503,
        headers={"retry-after": "1"},
    )


def _undecodable_body_is_422(fallback: Handler) -> Handler:
    """FastAPI answers 400 when a JSON body is not UTF-8; it is malformed JSON like any other.

    So it gets the 422 a body that does not parse gets, in the same shape,
    and the status codes the OpenAPI schema documents hold for every body.
    """

    async def handle(request: Request, exc: Exception) -> Response:
        cause = exc.__cause__
        bad_request = isinstance(exc, HTTPException) and exc.status_code == 400
        if bad_request and isinstance(cause, UnicodeDecodeError):
            problem = f"the body is not UTF-8: {cause.reason} at byte {cause.start}"
            error = {"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error"}
            return JSONResponse({"detail": [{**error, "ctx": {"error": problem}}]}, 422)
        return await fallback(request, exc)

    return handle
