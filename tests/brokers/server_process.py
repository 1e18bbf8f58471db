"""A broker process on a free loopback port: start it, wait until it answers, stop it.

The private servers of the broker tests (tests/brokers/redis_server.py,
nats_server.py, tansu.py) are each one such process, restartable on the
same port; they say how to launch it and how to tell that it serves.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from types import TracebackType
from typing import Self

__all__ = ["ServerProcess", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """One server process on 127.0.0.1:``port``, restartable on the same port."""

    name = "server"
    """What error messages call it."""
    start_within = 10.0
    """Seconds the server may take to answer after starting."""

    def __init__(self) -> None:
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def _launch(self) -> subprocess.Popen[bytes]:
        """Start the process (without waiting for it to answer)."""
        raise NotImplementedError

    def _answers(self) -> bool:
        """Whether the server serves: by default, whether its port takes a connection."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _exited(self, process: subprocess.Popen[bytes]) -> str:
        """What to tell about a process that exited while starting."""
        return f"({process.returncode})"

    def start(self) -> Self:
        """Start the server and wait until it answers; returns it."""
        self._process = self._launch()
        self._wait_up(self.start_within)
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(kill=True)

    def _wait_up(self, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            process = self._process
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} on port {self.port} exited: {self._exited(process)}"
                )
            if self._answers():
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} on port {self.port} did not answer within {within}s")
