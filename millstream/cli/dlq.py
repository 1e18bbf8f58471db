"""``millstream dlq list | replay | purge``: the dead-letter queue of a topic and group."""

from __future__ import annotations

import base64
import dataclasses
from datetime import datetime
from typing import Annotated, Any

import orjson
import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from millstream.brokers.base import DeadLetter
from millstream.cli.common import (
    BrokerOption,
    GroupOption,
    IdsOption,
    TopicArgument,
    connected,
    dlq_app,
    payload_text,
    run,
    stdout,
)
from millstream.runtime.replay import replay_paced
from millstream.settings import load_settings


@dlq_app.command("list")
def dlq_list(
    topic: TopicArgument,
    group: GroupOption,
    broker: BrokerOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Letters to show.")] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Newest letters to skip.")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON lines with every field instead.")
    ] = False,
) -> None:
    """List the dead letters of TOPIC for GROUP, newest first."""
    letters, total = run(_list_letters(broker, topic, group, limit, offset))
    if as_json:
        for letter in letters:
            typer.echo(orjson.dumps(_letter_json(letter)).decode())
        return
    shown = f"{offset + 1}-{offset + len(letters)}" if letters else "none"
    title = f"dead letters of {topic!r} for {group!r}: {shown} of {total}"
    console = Console(highlight=False)
    console.print(_letters_table(letters, title, message_ids=console.width >= 110))


def _letters_table(letters: list[DeadLetter], title: str, *, message_ids: bool) -> Table:
    """Ids stay whole (``--id`` needs them); the error folds; message ids need room."""
    id_width = max((len(letter.id) for letter in letters), default=2)
    table = Table(title=Text(title), box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", no_wrap=True, min_width=id_width)
    if message_ids:
        table.add_column("message id", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("tries", justify="right", no_wrap=True, min_width=5)
    table.add_column("error", overflow="fold", min_width=20)
    table.add_column("failed at", no_wrap=True, min_width=14)
    table.add_column("payload", overflow="ellipsis", no_wrap=True, min_width=10, max_width=30)
    for letter in letters:
        failed_at = datetime.fromtimestamp(letter.failed_at).strftime("%m-%d %H:%M:%S")
        cells = [Text(letter.id), Text(letter.message_id)] if message_ids else [Text(letter.id)]
        preview = Text(payload_text(letter.payload)[1][:80])
        table.add_row(*cells, str(letter.attempts), Text(letter.error), failed_at, preview)
    return table


async def _list_letters(
    broker_url: str | None, topic: str, group: str, limit: int, offset: int
) -> tuple[list[DeadLetter], int]:
    async with connected(broker_url) as broker:
        queue = await broker.dead_letters(topic, group)
        return await queue.list(limit=limit, offset=offset), await queue.count()


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    """Every field; the payload as text when it is UTF-8, else base64."""
    fields = dataclasses.asdict(letter)
    try:
        fields["payload"], fields["payload_encoding"] = letter.payload.decode(), "utf-8"
    except UnicodeDecodeError:
        fields["payload"] = base64.b64encode(letter.payload).decode("ascii")
        fields["payload_encoding"] = "base64"
    return fields


@dlq_app.command("replay")
def dlq_replay(
    topic: TopicArgument,
    group: GroupOption,
    broker: BrokerOption = None,
    ids: IdsOption = None,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            min=0.001,
            help="Letters replayed per second at most [default: MILLSTREAM_DLQ_REPLAY_RATE, 500].",
        ),
    ] = None,
) -> None:
    """Put dead letters of TOPIC back into GROUP as fresh deliveries (all, or each --id)."""
    pace = rate if rate is not None else load_settings().dlq_replay_rate
    replayed = run(_change_letters(broker, topic, group, ids, purge=False, rate=pace))
    stdout().print(
        f"replayed {replayed} dead letter(s) of {topic!r} into {group!r}" + _missing(ids, replayed),
        markup=False,
    )


@dlq_app.command("purge")
def dlq_purge(
    topic: TopicArgument,
    group: GroupOption,
    broker: BrokerOption = None,
    ids: IdsOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Purge all without asking.")] = False,
) -> None:
    """Delete dead letters of TOPIC for GROUP (all, after confirming, or each --id)."""
    purged = run(_change_letters(broker, topic, group, ids, purge=True, confirmed=yes))
    stdout().print(
        f"purged {purged} dead letter(s) of {topic!r} for {group!r}" + _missing(ids, purged),
        markup=False,
    )


async def _change_letters(
    broker_url: str | None,
    topic: str,
    group: str,
    ids: list[str] | None,
    *,
    purge: bool,
    confirmed: bool = False,
    rate: float = 0.0,
) -> int:
    async with connected(broker_url) as broker:
        queue = await broker.dead_letters(topic, group)
        if not purge:
            return await replay_paced(queue, ids or None, rate)
        if not ids and not confirmed:
            total = await queue.count()
            if total == 0:
                return 0
            question = f"Purge all {total} dead letter(s) of {topic!r} for {group!r}?"
            typer.confirm(question, abort=True)
        return await queue.purge(ids or None)


def _missing(ids: list[str] | None, touched: int) -> str:
    if not ids or touched >= len(set(ids)):
        return ""
    return f"; {len(set(ids)) - touched} of the given ids were not in the queue"
