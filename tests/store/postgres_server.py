"""A private PostgreSQL server for tests that crash and restart the store.

The shared PostgreSQL at 127.0.0.1:5432 must not be restarted under other
tests, so these start their own on a free port: ``initdb`` into a fresh
directory, then ``postgres`` itself, run as the ``postgres`` system user
(PostgreSQL refuses to run as root; pytest's ``tmp_path`` is not reachable
by other users, so the data lives in a directory of its own under the
system temp directory). The server runs in a session of its own so that a
crash kills the postmaster and every backend at once, as an OOM kill or a
container kill would; the next start recovers from the WAL.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.brokers.server_process import ServerProcess
from tests.conftest import REQUIRE_BROKERS

__all__ = ["PostgresServer"]

USER = "postgres"


def _binaries() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin``; skips (or fails under CI) when absent."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(path.split("/")[4]) if path.split("/")[4].isdigit() else 0,
    )
    reason = ""
    if not found:
        reason = "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin"
    else:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            reason = f"there is no {USER!r} system user to run a private PostgreSQL as"
    if reason:
        if REQUIRE_BROKERS:
            pytest.fail(f"{reason}; MILLSTREAM_REQUIRE_BROKERS=1 makes this a failure")
        pytest.skip(reason)
    return Path(found[-1]).parent


class PostgresServer(ServerProcess):
    """One ``postgres`` on 127.0.0.1, restartable on the same port and data directory."""

    name = "postgres"
    start_within = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.bin = _binaries()
        account = pwd.getpwnam(USER)
        self.root = Path(tempfile.mkdtemp(prefix="millstream-pg-"))
        os.chown(self.root, account.pw_uid, account.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        subprocess.run(
            [self.bin / "initdb", "-D", self.data, "-U", USER, "--auth=trust", "--no-sync",
             "-E", "UTF8", "--locale=C"],
            user=USER, check=True, capture_output=True, cwd=self.root,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def _launch(self) -> subprocess.Popen[bytes]:
        # fsync off: the tests kill the server, not the machine; what a killed
        # server wrote is in the kernel's page cache and survives it.
        args = [
            self.bin / "postgres", "-D", self.data, "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
            "-c", "fsync=off", "-c", "max_connections=40", "-c", "shared_buffers=16MB",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                args, user=USER, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _answers(self) -> bool:
        """Whether it takes queries (it listens before recovery ends, answering "starting up")."""
        ready = subprocess.run(
            [self.bin / "pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"],
            capture_output=True,
        )
        return ready.returncode == 0

    def _exited(self, process: subprocess.Popen[bytes]) -> str:
        return f"({process.returncode}); its log ends:\n{self.log.read_text()[-2000:]}"

    def stop(self, *, kill: bool = False) -> None:
        """SIGKILL the postmaster and all its backends at once (a crash), or shut down fast."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        if kill:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.send_signal(signal.SIGINT)  # "fast" shutdown: rolls back, checkpoints
        process.wait(timeout=30)

    def remove(self) -> None:
        """Stop the server (crash) and delete its data."""
        self.stop(kill=True)
        shutil.rmtree(self.root, ignore_errors=True)
