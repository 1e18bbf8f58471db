"""Per-client token buckets: 429 with ``Retry-After`` when a client goes too fast."""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from starlette.types import ASGIApp, Receive, Scope, Send

from millstream.web.middleware.respond import json_response

__all__ = ["RateLimitMiddleware", "TokenBuckets"]


class TokenBuckets:
    """``rate`` tokens a second up to ``burst``, one bucket per client, LRU-bounded."""

    def __init__(self, rate: float, burst: int, max_clients: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, now: float | None = None) -> float:
        """0 if ``client`` may go now (a token is spent), else seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return wait


class RateLimitMiddleware:
    """Limits requests whose path starts with one of ``prefixes``, per client address."""

    def __init__(
        self, app: ASGIApp, rate: float, burst: int, prefixes: tuple[str, ...] = ("/",)
    ) -> None:
        self.app = app
        self.buckets = TokenBuckets(rate, burst)
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            client = scope.get("client")
            wait = self.buckets.take(client[0] if client else "?")
            if wait > 0:
                retry_after = str(max(1, math.ceil(wait)))
                await json_response(
                    send,
                    429,
                    {"detail": f"too many requests; retry after {retry_after}s"},
                    {"retry-after": retry_after},
                )
                return
        await self.app(scope, receive, send)
