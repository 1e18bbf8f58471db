"""One log line per request: method, route, status, duration and trace id."""

from __future__ import annotations

import logging
import time

from opentelemetry import propagate, trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestLogMiddleware"]

log = logging.getLogger("millstream.http")

_TRACE_HEADERS = (b"traceparent", b"tracestate")


class RequestLogMiddleware:
    """Logs at INFO (5xx at ERROR) after the response; the route is the path template.

    The trace id is the current span's (a tracing middleware around the app
    made one), else the caller's ``traceparent``, so a log line can be found
    from a trace and the other way round.
    """

    def __init__(self, app: ASGIApp, skip: tuple[str, ...] = ("/health", "/metrics")) -> None:
        self.app = app
        self.skip = skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.skip):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        trace_id = _trace_id(scope)

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
                "%s %s %d %.1fms trace=%s",
                scope["method"],
                template,
                status,
                millis,
                trace_id or "-",
                extra={
                    "http_method": scope["method"],
                    "http_route": template,
                    "http_status": status,
                    "duration_ms": round(millis, 2),
                    "trace_id": trace_id,
                },
            )


def _trace_id(scope: Scope) -> str | None:
    """The 32-hex-digit trace id this request belongs to, if any."""
    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _TRACE_HEADERS
        }
        if not carrier:
            return None
        span = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    return format(span.trace_id, "032x") if span.is_valid else None
