"""A private ``redis-server`` for tests that kill, restart or lock the broker.

The shared Redis at 127.0.0.1:6379 must not be restarted under other tests,
so these tests start their own on a free port, with an append-only file
fsynced on every write in a temporary directory: a restart, even after
SIGKILL, comes back with every write it acknowledged.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.brokers.server_process import ServerProcess, free_port
from tests.conftest import REQUIRE_BROKERS

__all__ = ["RedisServer", "delete_keys", "free_port", "redis_server_binary"]


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


class RedisServer(ServerProcess):
    """One ``redis-server`` process on 127.0.0.1, restartable on the same port and data."""

    name = "redis-server"

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        super().__init__()
        self.directory = directory
        self.password = password
        self.binary = redis_server_binary()

    @property
    def url(self) -> str:
        """``redis://`` URL of the server, with the password when it has one."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _launch(self) -> subprocess.Popen[bytes]:
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
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _exited(self, process: subprocess.Popen[bytes]) -> str:
        err = process.stderr.read().decode() if process.stderr else ""
        log = self.directory / "redis.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        return f"{err}{tail}"

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


async def delete_keys(url: str, prefix: str) -> None:
    """Delete every key of the Redis at ``url`` whose name starts with ``prefix``."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
