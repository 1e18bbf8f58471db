"""``millstream run --workers N``: uvicorn's process supervisor, with millstream's server in each.

uvicorn's supervisor starts each worker with a plain ``uvicorn.Server`` and
no logging; here each worker runs the same draining server as a single
process (readiness DOWN at the signal, responses ``Connection: close`` while
it lingers, consumers drained) and sets up logging as the parent did. The
parent closes its copy of the listening socket as soon as it is told to
stop, so once every worker has stopped accepting, a new connection is
refused at once rather than left in the kernel's queue until the parent
exits (where the client would see "server disconnected" for a request it
had already sent).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from socket import socket
from typing import Any, Literal

import uvicorn
from uvicorn.supervisors import multiprocess

from millstream.observability.logs import configure_logging
from millstream.runtime.member import MemberName, claim_slot

__all__ = ["Logging", "run_workers"]


@dataclass(frozen=True)
class Logging:
    """How the parent set up logging, for each worker to do the same."""

    level: str
    fmt: Literal["text", "json"]


class _Worker(multiprocess.Process):
    """One worker process: logging as the parent's, and the draining server."""

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket], *, target: str, logging: Logging
    ) -> None:
        self._target, self._logging = target, logging  # pickled to the child with the rest
        super().__init__(config, sockets)

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            from millstream.cli.serve import DrainingServer

            self._server = DrainingServer(self.config, self._target)
        return self._server

    def target(self, sockets: list[socket] | None = None) -> None:  # pragma: no cover - child
        configure_logging(self._logging.level, self._logging.fmt, root=True)
        _own_member_name()
        super().target(sockets)


class _Supervisor(multiprocess.Multiprocess):
    def terminate_all(self) -> None:
        super().terminate_all()
        for sock in self.sockets:  # the workers keep their own copies while they drain
            sock.close()


_CLAIMED: list[MemberName] = []  # a worker's slot, held for as long as the worker lives


def _own_member_name() -> None:
    """A configured ``MILLSTREAM_MEMBER`` is one name for the whole pod: each worker takes it
    plus the lowest slot no live worker holds, so no two live workers share a name, and a
    worker started in place of one that died gets that one's name back."""
    configured = os.environ.get("MILLSTREAM_MEMBER")
    if configured:
        claimed = claim_slot(configured)
        _CLAIMED.append(claimed)
        os.environ["MILLSTREAM_MEMBER"] = claimed.name


def run_workers(config: uvicorn.Config, target: str, logging: Logging) -> None:
    """Serve ``target`` (module:attribute) in ``config.workers`` processes until SIGTERM."""
    sock = config.bind_socket()
    with _workers_are(functools.partial(_Worker, target=target, logging=logging)):
        _Supervisor(config, sockets=[sock]).run()


@contextlib.contextmanager
def _workers_are(make: Any) -> Iterator[None]:
    """uvicorn's supervisor makes its workers in four places, by the module's name
    ``Process``: while it runs, that name makes ours."""
    original = multiprocess.Process
    multiprocess.Process = make  # type: ignore[misc]
    try:
        yield
    finally:
        multiprocess.Process = original  # type: ignore[misc]
