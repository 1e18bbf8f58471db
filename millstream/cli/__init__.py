"""The ``millstream`` command line: produce, consume, dead letters, docs and the demo.

Every command takes ``--broker URL`` (default: ``MILLSTREAM_BROKER_URL``,
then the embedded SQLite broker). A configuration error prints one red line
and exits 2; a broker error exits 1; Ctrl-C stops a command gracefully.
"""

from __future__ import annotations

from typing import Annotated

import typer

from millstream.cli import consume, dlq, docs, produce, serve
from millstream.cli.common import app, fail, stdout
from millstream.cli.serve import LogFormat, serve_app
from millstream.demo import banner, prepare_demo
from millstream.errors import ConfigError
from millstream.observability.logs import configure_logging
from millstream.settings import load_settings

__all__ = ["app", "consume", "dlq", "docs", "main", "produce", "serve"]


@app.command()
def demo(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
    rate: Annotated[
        float,
        typer.Option("--rate", min=0.1, help="Orders the simulated customers place a second."),
    ] = 5.0,
    poison_every: Annotated[
        int, typer.Option("--poison-every", min=2, help="Every Nth payment event is poison.")
    ] = 25,
    log_format: Annotated[
        LogFormat,
        typer.Option("--log-format", envvar="MILLSTREAM_LOG_FORMAT", case_sensitive=False),
    ] = LogFormat.TEXT,
) -> None:
    """Run the example order service with simulated payments at http://127.0.0.1:8080."""
    level = ctx.find_root().obj
    configure_logging((level or "WARNING").upper(), log_format.value, root=True)
    try:
        served, token = prepare_demo(rate=rate, poison_every=poison_every)
        drain = load_settings().drain_timeout
    except ConfigError as exc:
        fail(str(exc), code=2)
    banner(stdout(), f"http://{host}:{port}", token)
    serve_app(served, host, port, drain)


def main() -> None:
    """The ``millstream`` console script."""
    app(prog_name="millstream")
