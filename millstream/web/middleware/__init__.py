"""ASGI middleware, one concern per module."""

from __future__ import annotations

from millstream.web.middleware.body_limit import BodyLimitMiddleware
from millstream.web.middleware.closing import CloseWhenDrainingMiddleware
from millstream.web.middleware.rate_limit import RateLimitMiddleware
from millstream.web.middleware.request_log import RequestLogMiddleware

__all__ = [
    "BodyLimitMiddleware",
    "CloseWhenDrainingMiddleware",
    "RateLimitMiddleware",
    "RequestLogMiddleware",
]
