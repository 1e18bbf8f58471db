"""Ask keep-alive clients to reconnect once the service is shutting down.

While draining, every response carries ``Connection: close``: the server
closes each connection after its current response, so a client's next
request opens a new connection (to another instance, or refused once the
listener is closed) instead of racing the server closing an idle kept-alive
connection, which the client sees as "server disconnected" for a request it
already sent.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CloseWhenDrainingMiddleware"]

_CLOSE = (b"connection", b"close")


class CloseWhenDrainingMiddleware:
    """Adds ``Connection: close`` to HTTP responses while ``draining()`` says so."""

    def __init__(self, app: ASGIApp, draining: Callable[[], bool]) -> None:
        self.app = app
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.draining():
                headers = [h for h in message.get("headers", ()) if h[0].lower() != _CLOSE[0]]
                message = {**message, "headers": [*headers, _CLOSE]}
            await send(message)

        await self.app(scope, receive, closing)
