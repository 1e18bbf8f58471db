"""The README's code, run for real: every Python block is a file under ``examples/``.

A block is marked with the file it shows (``<!-- examples/readme/first.py -->``
on the line above it) and must equal that file, so the README never shows
code that was not run here. Each file is then run as a reader would: the
first as a script, the HTTP one under ``millstream run`` until SIGTERM, the
store one imported and driven through its ASGI app.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import IO

import httpx
import pytest

from millstream import Message, Millstream
from tests.brokers.redis_server import free_port
from tests.support import until, until_equal
from tests.web import SECRET, bearer, serving

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples" / "readme"
PRINTED = "payments: Payment(order_id='o-1', status='PAID', amount=100), attempt 1\n"
# A Python fence, with the comment naming its file on the line above when there is one.
BLOCK = re.compile(r"(?:<!-- (?P<file>\S+) -->\n)?```(?:python|py)\n(?P<code>.*?)^```", re.S | re.M)


def readme_blocks() -> list[tuple[str | None, str]]:
    """Each Python block of the README: the file its comment names (if any) and its code."""
    return [(found["file"], found["code"]) for found in BLOCK.finditer(README.read_text())]


def clean_environment(**settings: str) -> dict[str, str]:
    """This process's environment without millstream settings, plus ``settings``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MILLSTREAM_")}
    return {**env, **settings}


def test_every_python_block_in_the_readme_is_an_example_file() -> None:
    blocks = readme_blocks()
    assert blocks, "README.md has no ```python block; did the fences change?"
    for file, code in blocks:
        assert file is not None, (
            "a ```python block in README.md names no file; put <!-- examples/readme/NAME.py --> "
            f"on the line above it:\n{code[:300]}"
        )
        path = ROOT / file
        assert file.startswith("examples/") and path.is_file(), f"{file} is no file under examples/"
        assert code == path.read_text(), f"README.md's block differs from {file}: copy the file in"
    shown = {file for file, _ in blocks}
    files = {f"examples/readme/{p.name}" for p in EXAMPLES.glob("*.py") if p.name != "__init__.py"}
    assert shown == files, "every file in examples/readme/ is shown in README.md, once"
    assert len(blocks) == len(shown)


@pytest.mark.slow
@pytest.mark.parametrize("broker_url", [None, "memory://"], ids=["default-sqlite", "memory"])
def test_the_first_example_prints_the_payment_it_handled_and_exits(
    tmp_path: Path, broker_url: str | None
) -> None:
    env = clean_environment(**({} if broker_url is None else {"MILLSTREAM_BROKER_URL": broker_url}))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "first.py")],
        cwd=tmp_path,  # the default broker is ./.millstream/broker.db
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == PRINTED
    assert (tmp_path / ".millstream" / "broker.db").is_file() == (broker_url is None)


async def _ready(http: httpx.AsyncClient) -> int | None:
    try:
        return (await http.get("/health/ready")).status_code
    except httpx.TransportError:
        return None  # not listening yet


def millstream_run(target: str, port: int, cwd: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """``millstream run target`` in ``cwd``, with the repository importable and a JWT secret."""
    env = clean_environment(PYTHONPATH=str(ROOT), MILLSTREAM_JWT_SECRET=SECRET)
    command = [sys.executable, "-m", "millstream.cli", "run", target, "--port", str(port)]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=log)


@pytest.mark.slow
async def test_the_http_example_answers_behind_auth_under_millstream_run(tmp_path: Path) -> None:
    port = free_port()
    output = tmp_path / "output.log"
    with output.open("wb") as log:
        process = millstream_run("examples.readme.http_api:app", port, tmp_path, log)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                await until_equal(lambda: _ready(http), 200, within=30)
                assert (await http.get("/api/v1/orders/o-1")).status_code == 401
                reply = await http.get("/api/v1/orders/o-1", headers=bearer())
                assert reply.status_code == 200, reply.text
                assert reply.json() == {"id": "o-1", "status": "CREATED"}
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.wait, 30)
    assert code == 0, output.read_text()[-2000:]


@pytest.fixture
def shared_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``examples/readme/shared_state.py`` imported afresh on the memory broker and a new store."""
    for name in [name for name in os.environ if name.startswith("MILLSTREAM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MILLSTREAM_BROKER_URL", "memory://")
    monkeypatch.setenv("MILLSTREAM_STORE_URL", f"sqlite:///{tmp_path}/state.db")
    name = "examples.readme.shared_state"
    sys.modules.pop(name, None)  # its app reads the settings when the module is imported
    yield importlib.import_module(name)
    sys.modules.pop(name, None)


async def test_the_state_example_writes_publishes_through_the_outbox_and_invalidates(
    shared_state: ModuleType,
) -> None:
    ms: Millstream = shared_state.ms
    created: list[Message] = []

    @ms.consumer("orders.created", group="readme-observer")
    async def observe(event: bytes, msg: Message) -> None:
        created.append(msg)

    async with serving(shared_state.app) as http:

        async def status() -> str:
            reply = await http.get("/api/v1/orders/o-1")
            assert reply.status_code == 200, reply.text
            return str(reply.json()["status"])

        reply = await http.post("/api/v1/orders", json={"id": "o-1"})
        assert reply.status_code == 201, reply.text
        assert reply.json() == {"id": "o-1", "status": "CREATED"}
        await until(lambda: len(created) == 1)  # the outbox relay sent the event
        assert (created[0].key, json.loads(created[0].payload)) == ("o-1", {"id": "o-1"})

        assert await status() == "CREATED"
        assert shared_state.orders_cache.size == 1  # read once, then served from the cache
        await ms.publish("payments", {"order_id": "o-1"})
        await until_equal(status, "PAID")  # the consumer's commit dropped the cached CREATED
        missing = await http.get("/api/v1/orders/o-2")
        assert missing.status_code == 404 and "o-2" in missing.text
