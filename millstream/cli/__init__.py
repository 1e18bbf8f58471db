"""The ``millstream`` command line: produce, consume, dead letters and the demo.

Every command takes ``--broker URL`` (default: ``MILLSTREAM_BROKER_URL``,
then the embedded SQLite broker). A configuration error prints one red line
and exits 2; a broker error exits 1; Ctrl-C stops a command gracefully.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from millstream.cli import consume, dlq, produce, serve
from millstream.cli.common import BrokerOption, app, run, stdout
from millstream.demo import run_demo, summary

__all__ = ["app", "consume", "dlq", "main", "produce", "serve"]


@app.command()
def demo(
    ctx: typer.Context,
    broker: BrokerOption = None,
    rate: Annotated[
        float, typer.Option("--rate", min=0.1, help="Payment events published per second.")
    ] = 100.0,
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=0.1, help="Seconds to run (default: until Ctrl-C)"),
    ] = None,
) -> None:
    """Run an order service fed simulated payments, some poison, with a live dashboard."""
    if ctx.obj is None:  # the dashboard shows retries and dead letters; logs would repeat them
        logging.getLogger("millstream").setLevel(logging.CRITICAL + 1)
    out = stdout()
    final = run(run_demo(broker, rate=rate, duration=duration, console=out))
    out.print(summary(final))


def main() -> None:
    """The ``millstream`` console script."""
    app(prog_name="millstream")
