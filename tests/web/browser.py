"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) and a real server.

``chrome()`` skips the test when the browser or its driver is missing, or
fails it under ``MILLSTREAM_REQUIRE_BROKERS=1`` (CI installs both).
``served(app)`` runs an ASGI app under uvicorn on a free loopback port in
a thread of its own, lifespan included, for as long as the block lasts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from starlette.types import ASGIApp

from tests.conftest import REQUIRE_BROKERS

__all__ = ["DOCS_SCREENSHOT", "chrome", "served", "wait_for"]

CHROMIUM = os.environ.get("MILLSTREAM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MILLSTREAM_CHROMEDRIVER", "/usr/bin/chromedriver")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"
"""Where the README's screenshot lives; rewritten when MILLSTREAM_UPDATE_SCREENSHOT=1."""

T = TypeVar("T")


def _missing() -> str | None:
    for what, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if shutil.which(path) is None:
            return (
                f"{what} is not installed at {path} (apt-get install -y chromium chromium-driver)"
            )
    return None


@contextlib.contextmanager
def chrome(width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A headless Chromium driven by Selenium, at ``width`` x ``height``."""
    missing = _missing()
    if missing is not None:
        if REQUIRE_BROKERS:
            pytest.fail(f"{missing}; MILLSTREAM_REQUIRE_BROKERS=1 makes this a failure")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def served(app: ASGIApp) -> Iterator[str]:
    """``app`` under uvicorn on 127.0.0.1, started; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=10)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), within=30, what="server start")
        assert server.started, "uvicorn did not start; see the log above"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def wait_for(check: Callable[[], T], *, within: float = 15.0, what: str = "condition") -> T:
    """``check()``'s first truthy value, polled until ``within`` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        time.sleep(0.1)
