"""Structured logs: every record carries the current trace and span id, as text or JSON lines.

``configure_logging`` installs one handler for the ``millstream`` logger tree
(or the root logger), with :class:`TraceContextFilter` on it, so a log line
written while a message is handled, or a request served, names the trace
that an exporter shows for it. The filter and formatter are public for
applications that build their own handlers.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any, Final, Literal

import orjson
from opentelemetry import trace

from millstream.errors import ConfigError

__all__ = ["JsonFormatter", "TraceContextFilter", "configure_logging", "text_formatter"]

TEXT_FORMAT: Final = (
    "%(asctime)s.%(msecs)03dZ %(levelname)-8s %(name)s "
    "[trace_id=%(trace_id)s span_id=%(span_id)s] %(message)s"
)

# Attributes every LogRecord has; whatever else a record carries came from `extra`.
_RECORD_FIELDS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "trace_id",
    "span_id",
}


class TraceContextFilter(logging.Filter):
    """Sets ``trace_id`` and ``span_id`` on every record: lowercase hex, or ``""`` outside a span.

    Put it on a handler (not a logger) so it also sees records propagated
    from child loggers. Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            trace_id = format(span_context.trace_id, "032x")
            span_id = format(span_context.span_id, "016x")
        else:
            trace_id = span_id = ""
        record.__dict__.update(trace_id=trace_id, span_id=span_id)
        return True


def text_formatter() -> logging.Formatter:
    """Human-readable lines with UTC ISO 8601 times and the trace and span id."""
    formatter = logging.Formatter(TEXT_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    return formatter


class JsonFormatter(logging.Formatter):
    """One JSON object per record.

    Fields: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    ``trace_id``, ``span_id``, then every ``extra`` field, then
    ``exception`` (the formatted traceback) and ``stack`` when present.
    Values JSON cannot hold are written as their ``str``.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": record.__dict__.get("trace_id", ""),
            "span_id": record.__dict__.get("span_id", ""),
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_FIELDS and name not in entry:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _dumps(entry)


def _iso_utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _dumps(entry: dict[str, Any]) -> str:
    try:
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        # e.g. an int beyond 64 bits, which orjson refuses without asking `default`;
        # a log line must not be lost to one value it reports.
        return orjson.dumps({k: _plain(v) for k, v in entry.items()}).decode()


def _plain(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, str | bool | float):
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return value
    return str(value)


class _MillstreamHandler(logging.StreamHandler[IO[str]]):
    """The handler ``configure_logging`` installs, told apart so a second call replaces it."""


def configure_logging(
    level: str = "INFO",
    fmt: Literal["text", "json"] = "text",
    *,
    root: bool = False,
    stream: IO[str] | None = None,
) -> None:
    """Log millstream's records at ``level`` to ``stream`` (stderr) as ``fmt`` lines with trace ids.

    With ``root=True`` the handler goes on the root logger, so every
    library's records share the format and level. Otherwise it goes on the
    ``millstream`` logger, which then stops propagating so that a handler on
    the root logger does not print each line twice. Calling again replaces
    the handler installed before: never two.
    """
    numeric = _level(level)
    if fmt not in ("text", "json"):
        raise ConfigError(f"log format {fmt!r} is not supported; use 'text' or 'json'")
    handler = _MillstreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else text_formatter())
    ours, top = logging.getLogger("millstream"), logging.getLogger()
    for logger in (ours, top):
        for old in [h for h in logger.handlers if isinstance(h, _MillstreamHandler)]:
            logger.removeHandler(old)
            old.close()
    (top if root else ours).addHandler(handler)
    ours.setLevel(numeric)
    ours.propagate = root
    if root:
        top.setLevel(numeric)


def _level(name: str) -> int:
    levels = logging.getLevelNamesMapping()
    numeric = levels.get(name.upper())
    if numeric is None:
        raise ConfigError(
            f"log level {name!r} is not a level; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
        )
    return numeric
