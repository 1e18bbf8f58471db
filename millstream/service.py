"""``Millstream``: the app with its HTTP face, as ``from millstream import Millstream`` gives it.

The app itself (``millstream.app``) knows no face; this class adds the web
layer on first use, so a service run headless (``ms.serve()``, ``async
with ms``) never imports FastAPI.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from millstream.app import App

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI

    from millstream.web.service import Service

__all__ = ["Millstream"]


class Millstream(App):
    """A service's consumers and publisher over one broker connection, and its HTTP face.

    ``broker_url`` (or ``MILLSTREAM_BROKER_URL``) chooses the broker; other
    keyword arguments are :class:`Settings` fields. ``async with ms:``
    connects and starts every consumer, and on exit drains and stops them;
    ``ms.fastapi()`` (or ``ms.lifespan`` and ``ms.router``) serves them
    behind HTTP with health, metrics and admin routes.
    """

    _web: Service | None = None

    @property
    def web(self) -> Service:
        """The web layer of this app: health, metrics, auth, lifespan (made on first use)."""
        if self._web is None:
            from millstream.web.service import Service

            self._web = Service(self)
        return self._web

    def fastapi(self, app: FastAPI | None = None, **kwargs: Any) -> FastAPI:
        """A FastAPI app whose lifespan runs these consumers, with health, metrics and admin."""
        from millstream.web import create_app

        return create_app(self, app, **kwargs)

    def worker(self) -> FastAPI:
        """The ASGI app of a worker: these consumers in its lifespan, health and metrics only."""
        from millstream.web import worker_app

        return worker_app(self)

    @property
    def lifespan(self) -> Callable[[Any], AbstractAsyncContextManager[None]]:
        """For ``FastAPI(lifespan=ms.lifespan)``: start with the server, drain on shutdown."""
        return self.web.lifespan

    @property
    def router(self) -> APIRouter:
        """Health, metrics and admin routes, for an app you compose yourself."""
        return self.web.router
