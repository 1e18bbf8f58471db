"""Dead letters through the command line: list them as JSON, replay one by id, purge the rest."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from typer.testing import CliRunner, Result

from millstream import OutgoingMessage
from tests.conformance.factory import BrokerFactory, group_of, needs
from tests.support import events, fetch_n


async def cli(*arguments: str) -> Result:
    """``millstream <arguments>``, in a thread: the command runs an event loop of its own."""
    from millstream.cli import app

    return await asyncio.to_thread(CliRunner().invoke, app, list(arguments))


async def test_dead_letters_round_trip_through_the_cli(brokers: BrokerFactory, topic: str) -> None:
    needs(brokers, "process_url", "the command line")
    assert brokers.process_url is not None
    url, group = brokers.process_url, group_of(topic)
    broker = await brokers.connect()
    sub = await broker.subscribe(topic, group, prefetch=10)
    await broker.publish(topic, [OutgoingMessage(b"\xffbin", key="k"), *events(1)])
    got = await fetch_n(sub, 2)
    await sub.settle([], [], [(m, f"FatalError: poison {i}") for i, m in enumerate(got)])
    await sub.close()  # the group is free for the next member (Kafka: at once)
    ids = [m.id for m in got]

    listed = await cli("dlq", "list", topic, "-g", group, "-b", url, "--json")
    assert listed.exit_code == 0, listed.output
    letters: list[dict[str, Any]] = [json.loads(line) for line in listed.output.splitlines()]
    assert [(x["message_id"], x["error"]) for x in letters] == [
        (ids[1], "FatalError: poison 1"),
        (ids[0], "FatalError: poison 0"),
    ]
    assert letters[1]["key"] == "k" and letters[1]["attempts"] == 1
    assert letters[1]["payload_encoding"] == "base64"

    replayed = await cli("dlq", "replay", topic, "-g", group, "-b", url, "--id", letters[1]["id"])
    assert replayed.exit_code == 0 and "replayed 1 dead letter(s)" in replayed.output, (
        replayed.output
    )
    sub = await broker.subscribe(topic, group, prefetch=10)
    [back] = await fetch_n(sub, 1)
    assert (back.id, back.payload, back.attempt) == (ids[0], b"\xffbin", 1)

    purged = await cli("dlq", "purge", topic, "-g", group, "-b", url, "-y")
    assert purged.exit_code == 0 and "purged 1 dead letter(s)" in purged.output, purged.output
