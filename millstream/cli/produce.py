"""``millstream produce``: publish JSON lines, validated batch by batch."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from millstream.app import App
from millstream.cli.common import BrokerOption, TopicArgument, app, fail, run, stderr, stdout


@dataclasses.dataclass
class _Batch:
    """Validated lines ready to publish: the raw JSON bytes and each one's key."""

    payloads: list[bytes] = dataclasses.field(default_factory=list)
    keys: dict[bytes, str | None] = dataclasses.field(default_factory=dict)
    last_line: int = 0
    size: int = 0


class _BadLine(Exception):
    def __init__(self, number: int, error: orjson.JSONDecodeError) -> None:
        super().__init__(f"line {number} is not valid JSON: {error.msg} at column {error.colno}")
        self.number = number


def _key_of(value: Any, key_field: str) -> str | None:
    found = value.get(key_field) if isinstance(value, dict) else None
    return None if found is None else str(found)


def _batches(lines: Iterable[bytes], size: int, key_field: str | None) -> Iterator[_Batch]:
    """Lines in validated batches; raises ``_BadLine`` before yielding a batch holding one."""
    batch = _Batch()
    for number, line in enumerate(lines, start=1):
        batch.size += len(line)
        raw = line.strip()
        if raw:
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise _BadLine(number, exc) from None
            batch.payloads.append(raw)
            if key_field is not None:
                batch.keys[raw] = _key_of(value, key_field)
        batch.last_line = number
        if len(batch.payloads) >= size:
            yield batch
            batch = _Batch()
    if batch.payloads or batch.size:
        yield batch


@app.command()
def produce(
    topic: TopicArgument,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            exists=True,
            dir_okay=False,
            help="JSON lines to publish (default: stdin)",
        ),
    ] = None,
    broker: BrokerOption = None,
    key_field: Annotated[
        str | None, typer.Option("--key-field", "-k", help="Payload field that is the message key.")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Messages per publish.")] = 500,
) -> None:
    """Publish JSON lines (one message each; empty lines skipped) to TOPIC.

    Each batch is validated before it is published, so a line that is not
    JSON stops the run with nothing from that batch on published.
    """
    started = time.perf_counter()
    total = file.stat().st_size if file is not None else None
    count = run(_produce(topic, file, total, broker, key_field, batch))
    seconds = max(time.perf_counter() - started, 1e-9)
    stdout().print(
        f"published {count:,} message(s) to {topic!r} in {seconds:.2f}s "
        f"({count / seconds:,.0f} msgs/s)",
        markup=False,
    )


async def _produce(
    topic: str,
    path: Path | None,
    total: int | None,
    broker_url: str | None,
    key_field: str | None,
    size: int,
) -> int:
    published, last_line = 0, 0
    progress = Progress(
        TextColumn("publishing to [bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[messages]:,} msgs"),
        TimeElapsedColumn(),
        console=stderr(),
    )
    async with App(broker_url) as ms:
        source = contextlib.nullcontext(sys.stdin.buffer) if path is None else path.open("rb")
        with source as lines, progress:
            task = progress.add_task(escape(topic), total=total, messages=0)
            try:
                for chunk in _batches(lines, size, key_field):
                    key_by = chunk.keys.__getitem__ if key_field is not None else None
                    await ms.publish_batch(topic, chunk.payloads, key_by=key_by)
                    published += len(chunk.payloads)
                    last_line = chunk.last_line
                    progress.update(task, advance=chunk.size, messages=published)
            except _BadLine as bad:
                progress.stop()
                where = f" (lines 1-{last_line})" if last_line else ""
                fail(
                    f"{bad}; {published} message(s) were published before it{where}, "
                    f"none from line {last_line + 1} on"
                )
    return published
