"""Shared test plumbing: broker reachability, with CI turning a skip into a failure."""

from __future__ import annotations

import logging
import os
import socket

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
