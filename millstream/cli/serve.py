"""``millstream run module:app``: serve an app under uvicorn with a graceful stop.

On SIGTERM or SIGINT readiness turns 503 at once and the server stops
accepting connections. For ``shutdown_linger`` seconds it keeps the open
ones and answers what comes on them with ``Connection: close``, so a
keep-alive client finishes its request and reconnects (elsewhere) rather
than racing the close of its idle connection and seeing "server
disconnected" for a request it had sent. Then uvicorn lets in-flight
requests finish, the lifespan drains the consumers and flushes their acks,
and the process exits 0. A second signal stops at once. With ``--workers N``
every worker does the same (``workers.py``).
"""

from __future__ import annotations

import asyncio
import enum
import os
import signal
import socket
import sys
from contextlib import suppress
from types import FrameType
from typing import Annotated, Any

import typer
import uvicorn
from uvicorn.importer import ImportFromStringError, import_from_string

from millstream.cli.common import app, fail, imported
from millstream.cli.workers import Logging, run_workers
from millstream.observability.logs import configure_logging
from millstream.settings import Settings, load_settings

__all__ = ["DrainingServer", "LogFormat", "run_command", "serve_app", "worker_command"]


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class DrainingServer(uvicorn.Server):
    """A uvicorn server that tells the app it is shutting down, and lingers, before it
    stops listening. ``target`` is the ASGI app, or its module:attribute (in a worker)."""

    def __init__(self, config: uvicorn.Config, target: Any) -> None:
        super().__init__(config)
        self._target = target

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        service = self._service()
        if service is not None:
            service.begin_shutdown()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        service = self._service()
        linger = service.settings.shutdown_linger if service is not None else 0.0
        if linger > 0 and self.server_state.connections and not self.force_exit:
            for server in self.servers:  # no new connections; uvicorn closes them again
                server.close()
            for sock in sockets or []:
                sock.close()
            deadline = asyncio.get_running_loop().time() + linger
            # uvicorn's set of connections has no event to wait on: look every 50 ms.
            while (  # noqa: ASYNC110
                self.server_state.connections
                and not self.force_exit
                and asyncio.get_running_loop().time() < deadline
            ):
                await asyncio.sleep(0.05)
        await super().shutdown(sockets)

    def _service(self) -> Any:
        target = self._target
        if isinstance(target, str):
            with suppress(ImportFromStringError):
                target = import_from_string(target)  # imported already: the same object
        return getattr(getattr(target, "state", None), "millstream", None)

    def run_to_a_clean_exit(self) -> None:
        """Serve until SIGTERM or SIGINT, drain, and return, so the process exits 0.

        Once it has shut down, uvicorn raises the signal that stopped it again
        under the handler it found, so by default a drained process still dies
        of SIGTERM (exit -15) and looks crashed to an orchestrator. Finding
        ``handle_exit`` there instead, the repeat is a no-op.
        """
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            self.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


Host = Annotated[
    str | None, typer.Option(help="Interface to listen on [default: MILLSTREAM_HOST or 127.0.0.1]")
]
Port = Annotated[
    int | None,
    typer.Option(min=0, max=65535, help="Port to listen on [default: MILLSTREAM_PORT or 8080]"),
]
Format = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="MILLSTREAM_LOG_FORMAT",
        case_sensitive=False,
        help="text, or json: one object per line with trace_id and span_id",
    ),
]


def _start(ctx: typer.Context, log_format: LogFormat) -> tuple[Settings, Logging]:
    """Logging as asked, then the settings (a bad one: one red line, exit 2)."""
    # Typer runs on its own copy of click, so the context comes as a parameter:
    # click.get_current_context() would find none.
    logging = Logging((ctx.find_root().obj or "INFO").upper(), log_format.value)
    configure_logging(logging.level, logging.fmt, root=True)
    try:
        return load_settings(), logging
    except Exception as exc:  # a ConfigError
        fail(str(exc), code=2)


@app.command("run")
def run_command(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="The ASGI app, as module:attribute.")],
    host: Host = None,
    port: Port = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    reload: Annotated[bool, typer.Option(help="Restart when code changes (development).")] = False,
    log_format: Format = LogFormat.TEXT,
) -> None:
    """Serve TARGET (e.g. examples.orders:app) with uvicorn; SIGTERM drains gracefully."""
    settings, logging = _start(ctx, log_format)
    drain = settings.drain_timeout
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as uvicorn does: module:app names a local module
    if reload:
        uvicorn.run(target, reload=True, **_options(host, port, drain))
        return
    if workers > 1:
        config = uvicorn.Config(target, workers=workers, **_options(host, port, drain))
        run_workers(config, target, logging)
        return
    serve_app(imported(target, "app.main:app"), host, port, drain)


@app.command("worker")
def worker_command(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="The Millstream object, as module:attribute.")],
    host: Host = None,
    port: Port = None,
    log_format: Format = LogFormat.TEXT,
) -> None:
    """Run TARGET's consumers without its API: health and metrics only, on their own port.

    For deployments that scale consumers apart from HTTP; SIGTERM drains and exits 0.
    """
    settings, _ = _start(ctx, log_format)
    loaded = imported(target, "app.main:ms")
    if not callable(getattr(loaded, "worker", None)):
        fail(
            f"{target!r} is a {type(loaded).__name__}, not a Millstream; point `millstream "
            "worker` at the Millstream object (e.g. app.main:ms), not its FastAPI app",
            2,
        )
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    serve_app(loaded.worker(), host, port, settings.drain_timeout)


def serve_app(loaded: Any, host: str, port: int, drain: float) -> None:
    """Serve the ASGI app ``loaded`` until SIGTERM or SIGINT, then drain; exit 1 if it never
    started."""
    server = DrainingServer(uvicorn.Config(loaded, **_options(host, port, drain)), loaded)
    server.run_to_a_clean_exit()
    if server.started is False and not server.should_exit:
        raise typer.Exit(1)


def _options(host: str, port: int, drain: float) -> dict[str, Any]:
    return {
        "host": host,
        "port": port,
        "timeout_graceful_shutdown": int(drain) + 1,
        "log_level": "info",
        "log_config": None,  # keep the handlers configure_logging installed
        "lifespan": "on",
    }
