"""Stores for the tests: a SQLite file per test, and a fresh PostgreSQL database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def opened(store_url: str) -> AsyncIterator[object]:
    from millstream.store import open_store

    store = open_store(store_url)
    store.schema(
        "CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, n INTEGER NOT NULL, note TEXT)"
    )
    await store.open()
    yield store
    await store.close()
