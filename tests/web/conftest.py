"""Fixtures the web test files share: a served app with one consumer and a client with a token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from millstream import Millstream
from tests.web import SECRET, bearer, memory_app, serving


@pytest.fixture
async def admin() -> AsyncIterator[tuple[Millstream, httpx.AsyncClient]]:
    """A service with one consumer, ``payments``, and a client that carries a valid token."""
    ms = memory_app(jwt_secret=SECRET)

    @ms.consumer("payments", name="payments", concurrency=2)
    async def on_payment(event: dict[str, int]) -> None: ...

    async with serving(ms.fastapi()) as http:
        http.headers.update(bearer())
        yield ms, http
