"""A private ``redis-server`` for tests that kill, restart or lock the broker.

The shared Redis at 127.0.0.1:6379 must not be restarted under other tests,
so these tests start their own on a free port, with an append-only file
fsynced on every write in a temporary directory: a restart, even after
SIGKILL, comes back with every write it acknowledged.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import pytest

from tests.conftest import REQUIRE_BROKERS

__all__ = ["RedisServer", "free_port", "redis_server_binary"]


def redis_server_binary() -> str:
    """The ``redis-server`` executable; skips (or fails under CI) when there is none."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if found is None:
        reason = "redis-server is not installed, so no private Redis can be started"
        if REQUIRE_BROKERS:
            pytest.fail(f"{reason}; MILLSTREAM_REQUIRE_BROKERS=1 makes this a failure")
        pytest.skip(reason)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, restartable on the same port and data."""

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.binary = redis_server_binary()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of the server, with the password when it has one."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers; returns it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_up()
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (clean shutdown) or SIGKILL (a crash)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        process.wait(timeout=10)

    def restart(self, *, kill: bool = True, down_for: float = 0.0) -> None:
        """Stop (crash, by default), stay down ``down_for`` seconds, start on the same port."""
        self.stop(kill=kill)
        time.sleep(down_for)
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(kill=True)

    def _wait_up(self, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            process = self._process
            if process is not None and process.poll() is not None:
                err = process.stderr.read().decode() if process.stderr else ""
                log = self.directory / "redis.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server on port {self.port} exited: {err}{tail}")
            if self._answers():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {within}s")

    def _answers(self) -> bool:
        """PONG, or NOAUTH when it wants a password: either way it serves commands."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                conn.sendall(b"PING\r\n")
                reply = conn.recv(64)
        except OSError:
            return False
        # -LOADING means it is still reading the append-only file.
        return reply.startswith((b"+PONG", b"-NOAUTH"))
