"""``millstream consume``: print and acknowledge messages, for debugging."""

from __future__ import annotations

import asyncio
from typing import Annotated

import orjson
import typer
from rich.text import Text

from millstream.cli.common import (
    BrokerOption,
    GroupOption,
    TopicArgument,
    app,
    connected,
    payload_text,
    run,
    stderr,
    stdout,
)
from millstream.message import Message
from millstream.signals import stop_on_signals

_POLL = 0.5  # seconds one fetch waits, so Ctrl-C and --timeout are noticed quickly


@app.command()
def consume(
    topic: TopicArgument,
    group: GroupOption,
    broker: BrokerOption = None,
    count: Annotated[
        int | None, typer.Option("--count", "-n", min=1, help="Stop after this many messages.")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", "-t", min=0, help="Stop after this many idle seconds."),
    ] = None,
) -> None:
    """Print and acknowledge messages of TOPIC as a member of GROUP (for debugging).

    Runs until --count messages, --timeout idle seconds, or Ctrl-C.
    """
    received = run(_consume(topic, group, broker, count, timeout))
    stderr().print(
        f"consumed {received:,} message(s) from {topic!r} as group {group!r}", markup=False
    )


async def _consume(
    topic: str, group: str, broker_url: str | None, count: int | None, timeout: float | None
) -> int:
    out = stdout()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received = 0
    async with connected(broker_url) as broker:
        subscription = await broker.subscribe(topic, group, prefetch=100)
        try:
            with stop_on_signals(stop.set):
                idle_since = loop.time()
                while not stop.is_set() and (count is None or received < count):
                    wanted = 100 if count is None else min(100, count - received)
                    wait = _POLL
                    if timeout is not None:
                        wait = max(0.0, min(_POLL, idle_since + timeout - loop.time()))
                    messages = await subscription.fetch(wanted, wait)
                    if messages:
                        for message in messages:
                            out.print(_describe(message))
                        await subscription.settle(messages, [], [])
                        received += len(messages)
                        idle_since = loop.time()
                    elif timeout is not None and loop.time() - idle_since >= timeout:
                        break
        finally:
            await subscription.close()
    return received


def _describe(message: Message) -> Text:
    """One line: id, key, attempt, headers, then the payload as JSON, text or bytes."""
    kind, shown = payload_text(message.payload)
    return Text.assemble(
        (message.id, "bold"),
        ("  key=", "dim"),
        str(message.key),
        ("  attempt=", "dim"),
        str(message.attempt),
        ("  headers=", "dim"),
        orjson.dumps(dict(message.headers)).decode(),
        (f"  {kind}=", "dim"),
        shown,
    )
