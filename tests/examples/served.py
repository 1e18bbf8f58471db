"""What the order service's tests share: its test secret and order, reads through its API,
and serving it as ``millstream run`` serves it, in a process of its own."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

from millstream.demo import dev_token

__all__ = ["AUTH", "ORDER", "ROOT", "SECRET", "eventually", "ready", "serve", "status_of"]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-secret-0123456789-0123456789"
AUTH = {"Authorization": f"Bearer {dev_token(SECRET)}"}
ORDER = {"customer_id": "c-7", "items": [{"sku": "mug", "quantity": 2, "unit_price": "9.50"}]}


async def status_of(http: httpx.AsyncClient, order_id: str) -> str:
    reply = await http.get(f"/api/v1/orders/{order_id}", headers=AUTH)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["status"])


async def eventually(read: Any, expected: object, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while (value := await read()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {expected!r}, still {value!r}")
        await asyncio.sleep(0.05)


def serve(port: int, env: dict[str, str], log: IO[str]) -> subprocess.Popen[bytes]:
    """``millstream run examples.orders:app`` on ``port``, configured by ``env``."""
    command = ["millstream.cli", "run", "examples.orders:app", "--port", str(port)]
    return subprocess.Popen(
        [sys.executable, "-m", *command], cwd=ROOT, env=env, stdout=log, stderr=log
    )


async def ready(http: httpx.AsyncClient) -> bool:
    try:
        return (await http.get("/health/ready")).status_code == 200
    except httpx.TransportError:
        return False
