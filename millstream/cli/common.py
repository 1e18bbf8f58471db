"""What every ``millstream`` command shares: the app, options, output and error handling."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from uvicorn.importer import ImportFromStringError, import_from_string

from millstream.brokers import connect
from millstream.brokers.base import Broker
from millstream.errors import BrokerError, ConfigError
from millstream.settings import load_settings

T = TypeVar("T")

app = typer.Typer(
    name="millstream",
    help="Run, feed and inspect millstream consumers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
dlq_app = typer.Typer(help="List, replay and purge dead letters.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

_POLL = 0.5  # seconds one consume fetch waits, so Ctrl-C and --timeout are noticed quickly


class LogLevel(enum.StrEnum):
    """The levels ``--log-level`` accepts."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


BrokerOption = Annotated[
    str | None,
    typer.Option(
        "--broker",
        "-b",
        help="Broker URL (default: $MILLSTREAM_BROKER_URL, else the embedded SQLite broker)",
        show_default=False,
    ),
]
TopicArgument = Annotated[str, typer.Argument(help="Topic name.", show_default=False)]
GroupOption = Annotated[
    str, typer.Option("--group", "-g", help="Consumer group.", show_default=False)
]
IdsOption = Annotated[
    list[str] | None,
    typer.Option("--id", help="A dead letter's id (repeat for several); all when omitted."),
]


# -- plumbing ----------------------------------------------------------------


def stdout() -> Console:
    return Console(soft_wrap=True, highlight=False)


def stderr() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as one red line on stderr and exit with ``code``."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    one_line = " ".join(lines[:1]) + ("" if len(lines) < 2 else " " + "; ".join(lines[1:]))
    stderr().print(f"[bold red]error:[/] [red]{escape(one_line)}[/]")
    raise typer.Exit(code)


def imported(target: str, example: str) -> Any:
    """``target`` (module:attribute) imported from the working directory, as uvicorn does;
    exit 2 saying why (and showing ``example``) if it cannot be."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return import_from_string(target)
    except ImportFromStringError as exc:
        fail(f"cannot load {target!r}: {exc}; expected module:attribute, e.g. {example}", 2)


def run(work: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning millstream's errors into one line and an exit code."""
    try:
        return asyncio.run(work)
    except ConfigError as exc:
        fail(str(exc), code=2)
    except BrokerError as exc:
        fail(f"broker: {exc}", code=1)
    except KeyboardInterrupt:
        stderr().print("interrupted")
        raise typer.Exit(130) from None


def broker_url_of(given: str | None) -> str:
    """``--broker``, else ``MILLSTREAM_BROKER_URL``, else the default."""
    return load_settings(broker_url=given).broker_url


@contextlib.asynccontextmanager
async def connected(broker_url: str | None) -> AsyncIterator[Broker]:
    broker = connect(broker_url_of(broker_url))
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()


def _log_to_stderr(level: str) -> Callable[[], None]:
    """Send millstream's logs at ``level`` to stderr; returns how to undo it."""
    logger = logging.getLogger("millstream")
    handler = RichHandler(console=stderr(), show_path=False)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous)

    return undo


@app.callback()
def configure(
    ctx: typer.Context,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            "--log-level",
            envvar="MILLSTREAM_LOG_LEVEL",
            case_sensitive=False,
            help="Log level of millstream's own logs (default: WARNING)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run, feed and inspect millstream consumers."""
    ctx.obj = log_level
    if ctx.invoked_subcommand in ("run", "worker", "demo"):
        return  # a service (the demo is one) logs through configure_logging, in text or JSON
    ctx.call_on_close(_log_to_stderr((log_level or LogLevel.WARNING).value))


def payload_text(payload: bytes) -> tuple[str, str]:
    """(``payload``, compact JSON), (``text``, escaped text) or (``bytes``, a bytes literal)."""
    try:
        return "payload", orjson.dumps(orjson.loads(payload)).decode()
    except orjson.JSONDecodeError:
        pass
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return "bytes", repr(payload)
    return "text", text.encode("unicode_escape").decode("ascii")
