"""An order service for ``millstream run tests.procs.web_app:app`` in the shutdown test.

The broker comes from ``MILLSTREAM_BROKER_URL`` (the SQLite broker in the
test). What happened is appended to ``WEB_APP_LOG`` with unbuffered writes,
so it survives however the process ends:

- ``handled <n> <attempt> <member>`` when the consumer finished message ``n``;
- ``request <id> start`` and ``request <id> end <status>`` around each
  request carrying an ``x-request-id`` header, so the test can tell a
  request the server never began from one it began and cut short.

``WEB_APP_HANDLER_SLEEP`` (seconds, default 0.005) is how long a message takes.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from millstream import Message as Delivery
from millstream import Millstream
from millstream.web import api_group

_LOG = os.open(os.environ["WEB_APP_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
_SLEEP = float(os.environ.get("WEB_APP_HANDLER_SLEEP", "0.005"))


def note(line: str) -> None:
    os.write(_LOG, f"{line}\n".encode())


class Order(BaseModel):
    n: int


ms = Millstream(settle_interval=0.01)
handled = 0


@ms.consumer("orders", group="web", concurrency=8)
async def on_order(order: Order, msg: Delivery) -> None:
    global handled
    await asyncio.sleep(_SLEEP)
    handled += 1
    note(f"handled {order.n} {msg.attempt} {ms.member}")


app = ms.fastapi(title="web_app")
v1 = api_group(ms, 1)


@v1.get("/orders/{n}")
async def read(n: int, delay: float = 0.0) -> dict[str, int]:
    """The read route; ``delay`` makes it slow, to be in flight when SIGTERM comes."""
    if delay:
        await asyncio.sleep(delay)
    return {"n": n, "handled": handled}


@v1.post("/orders", status_code=202)
async def place(order: Order) -> dict[str, str]:
    """The publish route: 202 once the broker has confirmed the message."""
    return {"id": await ms.publish("orders", order)}


app.include_router(v1)


class _RequestJournal:
    """Notes the start and end of each request that carries an ``x-request-id``."""

    def __init__(self, inner: ASGIApp) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ids = [v for k, v in scope.get("headers", []) if k == b"x-request-id"]
        if scope["type"] != "http" or not ids:
            await self.inner(scope, receive, send)
            return
        request_id = ids[0].decode()
        note(f"request {request_id} start")
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                note(f"request {request_id} end {status}")

        await self.inner(scope, receive, sending)


app.add_middleware(_RequestJournal)
