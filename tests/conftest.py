"""Shared test plumbing: broker reachability, with CI turning a skip into a failure."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator

import pytest

REQUIRE_BROKERS = os.environ.get("MILLSTREAM_REQUIRE_BROKERS") == "1"


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or, with MILLSTREAM_REQUIRE_BROKERS=1, fail) when ``host:port`` does not answer."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError as exc:
        reason = f"{name} is not reachable at {host}:{port} ({exc})"
    if REQUIRE_BROKERS:
        pytest.fail(f"{reason}; MILLSTREAM_REQUIRE_BROKERS=1 makes this a failure")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="millstream")


POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A database no other test uses, dropped afterwards."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import asyncio

    import asyncpg

    name = f"ms_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- figures the fault tests measure, printed once at the end of the run -------------

_FIGURES: list[str] = []


def report(test: str, **figures: object) -> None:
    """Record one line of measured figures (counts, seconds) for the end-of-run summary."""
    shown = ", ".join(
        f"{name}={value:.2f}" if isinstance(value, float) else f"{name}={value}"
        for name, value in figures.items()
    )
    _FIGURES.append(f"{test}: {shown}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("fault figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
