"""Log lines name the trace they were written in, as text or as one JSON object per line."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from millstream import ConfigError, Millstream
from millstream.observability.logs import configure_logging
from tests.support import until

log = logging.getLogger("millstream.tests")


@pytest.fixture(autouse=True)
def _restore_loggers() -> Iterator[None]:
    """configure_logging changes process-wide loggers; put them back for the next test."""
    saved = [
        (logger, list(logger.handlers), logger.level, logger.propagate)
        for logger in (logging.getLogger("millstream"), logging.getLogger())
    ]
    yield
    for logger, handlers, level, propagate in saved:
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def records(out: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in lines(out)]


async def test_a_line_logged_by_a_handler_carries_its_consumer_spans_ids(out: io.StringIO) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    configure_logging(fmt="json", stream=out)
    ms = Millstream("memory://", tracer_provider=provider)

    @ms.consumer("orders")
    async def handle(order: dict[str, str]) -> None:
        log.info("order %s paid", order["id"], extra={"order_id": order["id"]})

    async with ms:
        await ms.publish("orders", {"id": "o-1"})
        await until(lambda: any(s.name == "process orders" for s in exporter.get_finished_spans()))

    (process,) = [s for s in exporter.get_finished_spans() if s.name == "process orders"]
    assert process.context is not None
    (line,) = [r for r in records(out) if r["message"] == "order o-1 paid"]
    assert line["trace_id"] == f"{process.context.trace_id:032x}"
    assert line["span_id"] == f"{process.context.span_id:016x}"
    assert line["order_id"] == "o-1"


def test_text_lines_show_the_current_trace_and_span_or_nothing(out: io.StringIO) -> None:
    configure_logging(stream=out)
    with TracerProvider().get_tracer("test").start_as_current_span("work") as span:
        log.info("inside")
    log.info("outside")

    inside, outside = lines(out)
    context = span.get_span_context()
    assert f"[trace_id={context.trace_id:032x} span_id={context.span_id:016x}] inside" in inside
    assert "[trace_id= span_id=] outside" in outside
    assert " INFO " in inside
    assert " millstream.tests " in inside
    stamp = inside.split(" ", 1)[0]
    assert stamp.endswith("Z")
    assert datetime.fromisoformat(stamp).tzinfo == UTC


def test_json_lines_have_time_level_logger_message_ids_extras_and_exception(
    out: io.StringIO,
) -> None:
    configure_logging("DEBUG", "json", stream=out)
    before = datetime.now(UTC)
    log.debug("retrying", extra={"attempt": 2, "delay": 0.5, "when": before})
    try:
        raise ValueError("bad payload")
    except ValueError:
        log.exception("handler failed")

    retrying, failed = records(out)
    stamp = datetime.fromisoformat(retrying["time"])
    assert retrying["time"].endswith("Z")
    assert stamp.tzinfo == UTC
    assert abs((stamp - before).total_seconds()) < 5
    assert {k: retrying[k] for k in ("level", "logger", "message", "trace_id", "span_id")} == {
        "level": "DEBUG",
        "logger": "millstream.tests",
        "message": "retrying",
        "trace_id": "",
        "span_id": "",
    }
    assert (retrying["attempt"], retrying["delay"]) == (2, 0.5)
    assert datetime.fromisoformat(retrying["when"]) == before
    assert "exception" not in retrying
    assert failed["level"] == "ERROR"
    assert failed["exception"].startswith("Traceback (most recent call last)")
    assert "ValueError: bad payload" in failed["exception"]


def test_a_value_json_cannot_hold_does_not_lose_the_line(out: io.StringIO) -> None:
    configure_logging(fmt="json", stream=out)
    log.info("big", extra={"huge": 2**70, "thing": object()})

    (line,) = records(out)
    assert line["message"] == "big"
    assert line["huge"] == str(2**70)
    assert line["thing"].startswith("<object object")


def test_configuring_twice_installs_one_handler(out: io.StringIO) -> None:
    first = io.StringIO()
    configure_logging(fmt="json", stream=first)
    configure_logging(fmt="text", stream=out)
    log.info("once")

    assert first.getvalue() == ""
    assert len(lines(out)) == 1
    assert "once" in out.getvalue()
    ours = logging.getLogger("millstream")
    assert len([h for h in ours.handlers if type(h).__name__ == "_MillstreamHandler"]) == 1


def test_root_mode_formats_every_librarys_records_and_moves_the_handler(
    out: io.StringIO,
) -> None:
    configure_logging(stream=io.StringIO())
    configure_logging(fmt="json", root=True, stream=out)
    logging.getLogger("some.library").warning("from elsewhere")
    log.info("from millstream")

    assert [r["logger"] for r in records(out)] == ["some.library", "millstream.tests"]
    ours = logging.getLogger("millstream")
    assert not [h for h in ours.handlers if type(h).__name__ == "_MillstreamHandler"]


def test_records_below_the_level_are_dropped(out: io.StringIO) -> None:
    configure_logging("warning", stream=out)
    log.info("quiet")
    log.warning("loud")

    assert [line.rsplit(" ", 1)[-1] for line in lines(out)] == ["loud"]


@pytest.mark.parametrize(("level", "fmt"), [("LOUD", "text"), ("INFO", "xml")])
def test_an_unknown_level_or_format_is_a_config_error(level: str, fmt: Any) -> None:
    with pytest.raises(ConfigError, match=repr(level) if level == "LOUD" else repr(fmt)):
        configure_logging(level, fmt)
