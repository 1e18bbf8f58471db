"""One log line per request: method, route, status, duration and trace id."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestLogMiddleware"]

log = logging.getLogger("millstream.http")


class RequestLogMiddleware:
    """Logs at INFO (5xx at ERROR) after the response; the route is the path template."""

    def __init__(self, app: ASGIApp, skip: tuple[str, ...] = ("/health", "/metrics")) -> None:
        self.app = app
        self.skip = skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.skip):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or scope["path"]
            millis = (time.perf_counter() - started) * 1000
            log.log(
                logging.ERROR if status >= 500 else logging.INFO,
                "%s %s %d %.1fms",
                scope["method"],
                template,
                status,
                millis,
                extra={
                    "http_method": scope["method"],
                    "http_route": template,
                    "http_status": status,
                    "duration_ms": round(millis, 2),
                },
            )
