"""Tests of the web layer, in process: ASGI lifespan and requests as a server would drive them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from millstream import Millstream
from millstream.brokers.memory.broker import MemoryBroker, MemoryHub, MemorySubscription
from millstream.errors import BrokerUnavailable

SECRET = "a-test-secret-long-enough-for-hs256-keys"


def memory_app(hub: MemoryHub | None = None, **settings: Any) -> Millstream:
    """A ``Millstream`` on a fresh (or the given) in-memory broker, quick to settle and stop."""
    settings.setdefault("poll_timeout", 0.05)
    return Millstream(broker=MemoryBroker(hub or MemoryHub()), **settings)


def token(secret: str = SECRET, *, algorithm: str = "HS256", **claims: Any) -> str:
    """A signed JWT valid for a minute unless ``claims`` say otherwise."""
    claims.setdefault("sub", "ops")
    claims.setdefault("exp", int(time.time()) + 60)
    return jwt.encode(claims, secret, algorithm=algorithm)


def bearer(secret: str = SECRET, **claims: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {token(secret, **claims)}"}


class Lifespan:
    """Drives an app's ASGI lifespan protocol: ``startup()`` and ``shutdown()`` as uvicorn does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.state: dict[str, Any] = {}

    async def startup(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        self._task = asyncio.create_task(self.app(scope, self._inbox.get, self._outbox.put))
        await self._inbox.put({"type": "lifespan.startup"})
        reply = await self._reply()
        assert reply["type"] == "lifespan.startup.complete", reply

    async def shutdown(self) -> None:
        assert self._task is not None, "shutdown() before startup()"
        await self._inbox.put({"type": "lifespan.shutdown"})
        reply = await self._reply()
        assert reply["type"] == "lifespan.shutdown.complete", reply
        await self._task

    async def _reply(self) -> Message:
        assert self._task is not None
        reply = asyncio.ensure_future(self._outbox.get())
        await asyncio.wait({reply, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            reply.cancel()
            self._task.result()  # raises what the app failed with
            raise AssertionError("the app ended its lifespan without answering")
        return reply.result()


def client(
    app: ASGIApp, address: str = "127.0.0.1", lifespan: Lifespan | None = None
) -> httpx.AsyncClient:
    """An HTTP client calling ``app`` in process, as a client at ``address``.

    Given the ``lifespan`` the app was started with, each request gets a copy
    of its state, as servers do.
    """
    target = app
    if lifespan is not None:

        async def target(scope: Scope, receive: Receive, send: Send) -> None:
            await app({**scope, "state": dict(lifespan.state)}, receive, send)

    transport = httpx.ASGITransport(app=target, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://service")


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` started (lifespan) with a client; stopped on exit."""
    lifespan = Lifespan(app)
    await lifespan.startup()
    try:
        async with client(app, lifespan=lifespan) as http:
            yield http
    finally:
        await lifespan.shutdown()


class GatedBroker(MemoryBroker):
    """A memory broker that refuses subscriptions and pings while ``reachable`` is false."""

    def __init__(self, hub: MemoryHub | None = None, error: Exception | None = None) -> None:
        super().__init__(hub or MemoryHub())
        self.reachable = False
        self.error = error or BrokerUnavailable("connection refused (test)")

    async def subscribe(
        self, topic: str, group: str, *, prefetch: int, member: str | None = None
    ) -> MemorySubscription:
        if not self.reachable:
            raise self.error
        return await super().subscribe(topic, group, prefetch=prefetch, member=member)

    async def ping(self) -> None:
        if not self.reachable:
            raise self.error
        await super().ping()
