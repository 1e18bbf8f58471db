"""A private ``nats-server -js`` for tests that kill, restart or lock the broker, and cleanup.

The shared NATS at 127.0.0.1:4222 must not be restarted under other tests,
so these tests start their own on a free port, from a config file written
into a temporary directory, with JetStream storing to ``-sd`` there: a
restart, even after SIGKILL, comes back with the streams it acknowledged.
Users (with permissions) go into the config file when given.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.brokers.server_process import ServerProcess
from tests.conftest import REQUIRE_BROKERS

__all__ = ["NatsServer", "delete_streams", "nats_server_binary"]


def nats_server_binary() -> str:
    """The ``nats-server`` executable; skips (or fails under CI) when there is none."""
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
    )
    if found is None:
        reason = "nats-server is not installed, so no private NATS can be started"
        if REQUIRE_BROKERS:
            pytest.fail(f"{reason}; MILLSTREAM_REQUIRE_BROKERS=1 makes this a failure")
        pytest.skip(reason)
    return found


class NatsServer(ServerProcess):
    """One ``nats-server -js`` on 127.0.0.1, restartable on the same port and store.

    ``users`` are ``{"user": ..., "password": ..., "permissions": {...}}``
    entries of one account with JetStream enabled, as the config file has them.
    """

    name = "nats-server"

    def __init__(self, directory: Path, *, users: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.directory = directory
        self.users = users
        self.binary = nats_server_binary()

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """``nats://`` URL of the server, with credentials when given."""
        auth = f"{user}:{password}@" if user else ""
        return f"nats://{auth}127.0.0.1:{self.port}"

    def _launch(self) -> subprocess.Popen[bytes]:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "nats.conf"
        lines = [
            f"listen: 127.0.0.1:{self.port}",
            f"jetstream {{ store_dir: {json.dumps(str(self.directory / 'store'))} }}",
        ]
        if self.users:
            lines.append(
                f"accounts {{ APP {{ jetstream: enabled, users: {json.dumps(self.users)} }} }}"
            )
        config.write_text("\n".join(lines) + "\n")
        log = open(self.directory / "nats.log", "ab")  # noqa: SIM115 - the process owns it
        process = subprocess.Popen(
            [self.binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return process

    def _exited(self, process: subprocess.Popen[bytes]) -> str:
        return (self.directory / "nats.log").read_text()[-2000:]

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                return conn.recv(4096).startswith(b"INFO")
        except OSError:
            return False


async def delete_streams(url: str, topic: str) -> None:
    """Delete the streams a test on ``topic`` made: the topic's and its dead-letter streams."""
    import nats
    from nats.js.errors import NotFoundError

    from millstream.brokers.nats_names import Names

    names = Names(topic, "")
    dead_prefix = names.dead_stream.rsplit("_", 2)[0] + "_"
    client = await nats.connect(url, allow_reconnect=False)
    try:
        js = client.jsm()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name == names.stream or name.startswith(dead_prefix):
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)
    finally:
        await client.close()
