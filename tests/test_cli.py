"""The ``millstream`` command line against an embedded SQLite broker file."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from millstream.brokers import connect
from millstream.cli import app
from millstream.message import Message, OutgoingMessage

ROOT = Path(__file__).resolve().parent.parent

runner = CliRunner()


@pytest.fixture
def broker_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/b.db"


def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), input=input, env=env)


def consumed(output: str) -> list[dict[str, Any]]:
    """The messages ``millstream consume`` printed, one per line."""
    found = []
    for line in output.splitlines():
        head, marker, payload = line.partition("  payload=")
        if not marker:
            continue
        message_id, *fields = head.split("  ")
        envelope = dict(field.split("=", 1) for field in fields)
        found.append({"id": message_id, **envelope, "payload": json.loads(payload)})
    return found


def bury(url: str, topic: str, group: str, payloads: list[bytes]) -> None:
    """Publish ``payloads`` and dead-letter every one of them through the broker API."""

    async def run() -> None:
        broker = connect(url)
        await broker.connect()
        try:
            outgoing = [OutgoingMessage(p, key=f"k{i}") for i, p in enumerate(payloads)]
            await broker.publish(topic, outgoing)
            subscription = await broker.subscribe(topic, group, prefetch=10)
            messages: list[Message] = []
            while len(messages) < len(payloads):
                messages += await subscription.fetch(len(payloads), 5.0)
            deads = [(m, f"FatalError: poison {m.payload.decode()}") for m in messages]
            await subscription.settle([], [], deads)
            await subscription.close()
        finally:
            await broker.close()

    asyncio.run(run())


def test_produce_from_a_file_then_consume_the_same_payloads(
    tmp_path: Path, broker_url: str
) -> None:
    orders = [{"order_id": f"o{i}", "amount": i * 1.5, "tags": ["a", i]} for i in range(7)]
    lines = [json.dumps(order) for order in orders]
    lines.insert(3, "")  # empty lines are skipped
    source = tmp_path / "orders.jsonl"
    source.write_text("\n".join(lines) + "\n\n")

    produced = invoke(
        "produce", "orders", "--file", str(source), "--broker", broker_url,
        "--key-field", "order_id", "--batch", "3",
    )  # fmt: skip
    assert produced.exit_code == 0, produced.output
    assert "published 7 message(s) to 'orders'" in produced.stdout
    assert "msgs/s" in produced.stdout

    read = invoke("consume", "orders", "--group", "g", "--broker", broker_url, "--count", "7")
    assert read.exit_code == 0, read.output
    messages = consumed(read.stdout)
    assert [m["payload"] for m in messages] == orders
    assert [m["key"] for m in messages] == [o["order_id"] for o in orders]
    assert {m["attempt"] for m in messages} == {"1"}
    assert "consumed 7 message(s)" in read.stderr

    # They were acked: the group has nothing left, so an idle consume ends empty.
    again = invoke("consume", "orders", "-g", "g", "-b", broker_url, "--timeout", "0.3")
    assert again.exit_code == 0, again.output
    assert consumed(again.stdout) == []


def test_produce_stops_at_a_bad_json_line_and_publishes_nothing_from_its_batch(
    broker_url: str,
) -> None:
    lines = [json.dumps({"n": n}) for n in range(1, 6)] + ['{"n": 6,', json.dumps({"n": 7})]

    produced = invoke(
        "produce", "numbers", "--broker", broker_url, "--batch", "4", input="\n".join(lines)
    )
    assert produced.exit_code == 1, produced.output
    error = produced.stderr
    assert "line 6 is not valid JSON" in error
    assert "4 message(s) were published before it" in error
    assert "Traceback" not in produced.output

    read = invoke("consume", "numbers", "-g", "g", "-b", broker_url, "--timeout", "0.3")
    assert [m["payload"] for m in consumed(read.stdout)] == [{"n": n} for n in range(1, 5)]


def test_dlq_list_replay_and_purge(broker_url: str) -> None:
    bury(broker_url, "payments", "orders", [b'{"n":1}', b'{"n":2}', b'{"n":3}'])

    listed = invoke("dlq", "list", "payments", "-g", "orders", "-b", broker_url, "--json")
    assert listed.exit_code == 0, listed.output
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [letter["payload"] for letter in letters] == ['{"n":3}', '{"n":2}', '{"n":1}']
    assert all(letter["error"].startswith("FatalError: poison") for letter in letters)
    assert all(letter["attempts"] == 1 for letter in letters)

    table = invoke("dlq", "list", "payments", "-g", "orders", "-b", broker_url, "--limit", "2")
    assert table.exit_code == 0, table.output
    assert "1-2 of 3" in table.stdout
    assert letters[0]["id"] in table.stdout and letters[2]["id"] not in table.stdout

    replayed = invoke(
        "dlq", "replay", "payments", "-g", "orders", "-b", broker_url,
        "--id", letters[2]["id"], "--id", "no-such-letter",
    )  # fmt: skip
    assert replayed.exit_code == 0, replayed.output
    assert "replayed 1 dead letter(s)" in replayed.stdout
    assert "1 of the given ids were not in the queue" in replayed.stdout
    back = invoke("consume", "payments", "-g", "orders", "-b", broker_url, "--timeout", "0.3")
    assert [(m["payload"], m["attempt"]) for m in consumed(back.stdout)] == [({"n": 1}, "1")]

    declined = invoke("dlq", "purge", "payments", "-g", "orders", "-b", broker_url, input="n\n")
    assert declined.exit_code == 1
    assert "Purge all 2 dead letter(s)" in declined.output

    purged = invoke("dlq", "purge", "payments", "-g", "orders", "-b", broker_url, "--yes")
    assert purged.exit_code == 0, purged.output
    assert "purged 2 dead letter(s)" in purged.stdout
    empty = invoke("dlq", "list", "payments", "-g", "orders", "-b", broker_url, "--json")
    assert empty.exit_code == 0 and empty.stdout == ""


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["produce", "t", "--broker", "bogus://nowhere"], None),
        (["dlq", "list", "t", "-g", "g"], {"MILLSTREAM_BROKER_URL": "bogus://nowhere"}),
        (["consume", "t", "-g", "g", "--broker", "no-scheme-at-all"], None),
    ],
)
def test_a_bad_broker_url_is_one_red_line_and_exit_2(
    args: list[str], env: dict[str, str] | None
) -> None:
    result = invoke(*args, input="{}\n", env=env)
    assert result.exit_code == 2, result.output
    url = "no-scheme-at-all" if "no-scheme-at-all" in args else "bogus://nowhere"
    assert f"broker URL {url!r}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_consume_stops_gracefully_on_ctrl_c(tmp_path: Path, broker_url: str) -> None:
    invoke("produce", "t", "-b", broker_url, input='{"first": true}\n')
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "millstream.cli", "consume", "t", "-g", "g", "-b", broker_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # it is consuming once the first message is out
    assert '{"first":true}' in first
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "consumed 1 message(s)" in err


@pytest.mark.slow
def test_demo_serves_the_order_service_with_payments_and_poison(tmp_path: Path) -> None:
    """What a newcomer sees: URLs and a token; orders move; poison reaches the DLQ; Ctrl-C."""
    import httpx

    from tests.brokers.redis_server import free_port

    port = free_port()
    env = {
        **os.environ,
        "MILLSTREAM_BROKER_URL": f"sqlite:///{tmp_path}/broker.db",
        "MILLSTREAM_STORE_URL": f"sqlite:///{tmp_path}/state.db",
        "COLUMNS": "400",
    }
    env.pop("MILLSTREAM_JWT_SECRET", None)
    log = (tmp_path / "stderr.log").open("w")  # a pipe nobody reads would fill and block it
    process = subprocess.Popen(
        [sys.executable, "-m", "millstream.cli", "demo", "--port", str(port), "--rate", "40",
         "--poison-every", "3"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        printed = []
        for line in process.stdout:
            printed.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(printed)
        base = f"http://127.0.0.1:{port}"
        for path in ("/console", "/docs", "/health/ready", "/metrics", "/admin/consumers"):
            assert f"{base}{path}" in text, text
        token = re.search(r"export TOKEN=(\S+)", text)
        assert token is not None, text
        assert f"curl -s -X POST {base}/api/v1/orders" in text
        auth = {"Authorization": f"Bearer {token[1]}"}
        with httpx.Client(base_url=base, timeout=5) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if http.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the demo never became ready"
                time.sleep(0.2)
            line = {"sku": "mug", "quantity": 1, "unit_price": "3"}
            order = {"customer_id": "c-1", "items": [line]}
            created = http.post("/api/v1/orders", json=order, headers=auth)
            assert created.status_code == 201, created.text
            order_id = created.json()["id"]
            assert http.get(f"/api/v1/orders/{order_id}", headers=auth).status_code == 200
            assert "console/console.js" in http.get("/console").text
            # The simulated provider pays orders (moving them on) and some events are poison.
            while True:
                listed = http.get("/admin/consumers", headers=auth).json()
                consumers = {c["name"]: c for c in listed}
                payments, told = consumers["payments"], consumers["notifications"]
                if payments["acked"] > 0 and payments["dead"] > 0 and told["acked"] > 0:
                    break
                assert time.monotonic() < deadline, consumers
                time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
        log.close()
    assert process.returncode == 0, (tmp_path / "stderr.log").read_text()[-3000:]


def test_dlq_replay_honours_the_replay_rate_and_answers_missing_ids_at_once(
    broker_url: str,
) -> None:
    bury(broker_url, "payments", "orders", [b'{"n":%d}' % n for n in range(30)])

    started = time.monotonic()
    missing = invoke(
        "dlq", "replay", "payments", "-g", "orders", "-b", broker_url,
        *[arg for n in range(2000) for arg in ("--id", f"nothing-{n}")],
        env={"MILLSTREAM_DLQ_REPLAY_RATE": "10"},
    )  # fmt: skip
    assert missing.exit_code == 0, missing.output
    assert "replayed 0 dead letter(s)" in missing.stdout
    assert time.monotonic() - started < 3  # nothing replayed costs no time

    started = time.monotonic()
    paced = invoke(
        "dlq", "replay", "payments", "-g", "orders", "-b", broker_url,
        env={"MILLSTREAM_DLQ_REPLAY_RATE": "10"},
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert paced.exit_code == 0, paced.output
    assert "replayed 30 dead letter(s)" in paced.stdout
    assert elapsed >= 1.9, f"30 letters at 10/s went back in {elapsed:.2f}s"


def test_dlq_list_shows_the_reason_on_an_80_column_terminal() -> None:
    from rich.console import Console

    from millstream.brokers.base import DeadLetter
    from millstream.cli.dlq import _letters_table

    letter = DeadLetter(
        "1765130000000-0", "m-1", "payments", "orders",
        b'{"order_id":"o-1","status":"BAD","amount":100}', None, {}, 1,
        "IllegalTransition: order o-1 cannot go from CREATED to BAD", 1765130000.0,
    )  # fmt: skip
    console = Console(width=80, record=True)
    console.print(_letters_table([letter], "dead letters", message_ids=False))
    shown = " ".join(console.export_text().split())
    assert "IllegalTransition:" in shown and "CREATED to BAD" in shown
