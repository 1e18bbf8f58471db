"""The operator console: ``/console``, a page of static files over the admin API.

The page holds no data, so it needs no token: it asks for one, keeps it in
``sessionStorage`` and sends it with every call to the admin API, which is
where the data and the controls are. The files are read once, from the
package, and served with a policy that allows only this origin's scripts,
styles and calls.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Response

__all__ = ["ASSETS", "console_router"]

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
"""The console's files, by name, with their content types."""

_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


def console_router() -> APIRouter:
    """``GET /console`` (the page) and ``GET /console/{file}`` (its script and style)."""
    files = resources.files(__name__)
    content = {name: (files / name).read_bytes() for name in ASSETS}
    router = APIRouter(include_in_schema=False)

    def serve(name: str) -> Response:
        return Response(content[name], media_type=ASSETS[name], headers=_HEADERS)

    @router.get("/console")
    async def page() -> Response:
        return serve("index.html")

    @router.get("/console/console.js")
    async def script() -> Response:
        return serve("console.js")

    @router.get("/console/console.css")
    async def style() -> Response:
        return serve("console.css")

    return router
