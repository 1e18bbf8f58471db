"""``millstream run`` under load, then SIGTERM: a real uvicorn process on the SQLite broker.

What a rolling deploy relies on: readiness turns 503 at once, requests the
server began are answered, no request a client sent on an open connection
is left unanswered, messages in flight are handled and acked, the process
exits 0 within the drain timeout, and no message is lost; in one process and
with ``--workers 2`` (where each worker logs as the parent was told to).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from millstream import OutgoingMessage, connect
from tests.support import until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DRAIN_TIMEOUT = 8.0
SLOW_REQUEST = 1.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(url: str, log: Path, port: int, output: Path, workers: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MILLSTREAM_BROKER_URL": url,
        "MILLSTREAM_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
        "WEB_APP_LOG": str(log),
        # Where to listen, as a container is told: by variables, not flags.
        "MILLSTREAM_HOST": "127.0.0.1",
        "MILLSTREAM_PORT": str(port),
        "MILLSTREAM_MEMBER": "pod-a",  # one name for the pod; each worker adds a slot
        # A client is told to reconnect by the first answer it gets while the server
        # lingers; on a loaded CI machine a client may wait over a second between two.
        "MILLSTREAM_SHUTDOWN_LINGER": "3",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "millstream.cli",
            "run",
            "tests.procs.web_app:app",
            "--workers",
            str(workers),
            "--log-format",
            "json",
        ],
        cwd=ROOT,
        env=env,
        stdout=output.open("wb"),  # a file, not a pipe: a full pipe would stall the server
        stderr=subprocess.STDOUT,
    )


def journal(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


async def pending(url: str) -> list[int]:
    """What the group still has to handle: fetched by a fresh member, then released."""
    broker = connect(url)
    await broker.connect()
    subscription = await broker.subscribe("orders", "web", prefetch=1000)
    found = []
    while batch := await subscription.fetch(1000, timeout=0.3):
        found.extend(batch)
    await subscription.close()
    await broker.close()
    return sorted(int(m.payload.split(b":")[1].rstrip(b"}")) for m in found)


@dataclass
class Load:
    """What the clients saw: answers by request id, and which orders the broker confirmed."""

    answers: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    accepted: set[int] = field(default_factory=set)
    unsure: set[int] = field(default_factory=set)
    probes: set[str] = field(default_factory=set)  # readiness asked after the signal
    ids: itertools.count[int] = field(default_factory=itertools.count)

    async def call(
        self,
        http: httpx.AsyncClient,
        method: str,
        path: str,
        order: int | None = None,
        *,
        probe: bool = False,
    ) -> str:
        request_id = f"r{next(self.ids)}"
        if probe:
            self.probes.add(request_id)
        try:
            response = await http.request(
                method,
                path,
                json=None if order is None else {"n": order},
                headers={"x-request-id": request_id},
            )
        except httpx.TransportError as exc:
            # Refused, or a kept-alive connection closed as the request went out:
            # whether the server had begun it is for its journal to say.
            self.refused[request_id] = repr(exc)
            if order is not None:
                self.unsure.add(order)
            raise
        self.answers[request_id] = response.status_code
        if order is not None:
            (self.accepted if response.status_code == 202 else self.unsure).add(order)
        return request_id


async def worker(base: str, load: Load, orders: itertools.count[int]) -> None:
    """Publish and read in a loop, on one kept-alive connection, until the server is gone."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        try:
            while True:
                await load.call(http, "POST", "/api/v1/orders", next(orders))
                await load.call(http, "GET", "/api/v1/orders/1")
        except httpx.TransportError:
            return


async def probe_readiness(base: str, load: Load) -> list[int | str]:
    """Ask /health/ready on fresh connections until the server takes no more."""
    seen: list[int | str] = []
    while True:
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5) as http:
                request_id = await load.call(http, "GET", "/health/ready", probe=True)
                seen.append(load.answers[request_id])
        except httpx.TransportError as exc:
            # Refused once the listener is closed; or accepted just before and
            # closed unanswered, which the journal must show was never begun.
            seen.append(type(exc).__name__)
            return seen
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("processes", [1, 2])
async def test_sigterm_under_load_drains_requests_and_messages_and_exits_0(
    tmp_path: Path, processes: int
) -> None:
    url = f"sqlite:///{tmp_path}/broker.db?lease=30"
    log = tmp_path / "journal.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    output = tmp_path / "server.out"
    proc = serve(url, log, port, output, processes)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as probe:

            async def ready() -> bool:
                try:
                    return (await probe.get("/health/ready")).status_code == 200
                except httpx.TransportError:
                    assert proc.poll() is None, "the server exited before it was ready"
                    return False

            deadline = time.monotonic() + 30
            while not await ready():
                assert time.monotonic() < deadline, "the server never became ready"
                await asyncio.sleep(0.05)

            load = Load()
            orders = itertools.count()
            workers = [asyncio.create_task(worker(base, load, orders)) for _ in range(8)]
            await until(lambda: len(load.accepted) >= 300, within=30)
            consumed = [line for line in journal(log) if line[0] == "handled"]
            assert consumed, "the consumer handled nothing while the load ran"

            # Requests the server is in the middle of when the signal comes.
            slow_client = httpx.AsyncClient(base_url=base, timeout=30)
            slow = [
                asyncio.create_task(
                    load.call(slow_client, "GET", f"/api/v1/orders/{i}?delay={SLOW_REQUEST}")
                )
                for i in range(4)
            ]
            await asyncio.sleep(0.3)
            assert (await probe.get("/health/ready")).status_code == 200  # kept-alive

            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # The signal takes a moment to arrive (with workers, the parent passes it on
            # within half a second, slower on a busy machine): readiness turns within that.
            on_open_connection: int | str = 200
            while on_open_connection == 200 and time.monotonic() - signalled < 3.0:
                try:
                    request_id = await load.call(probe, "GET", "/health/ready", probe=True)
                    on_open_connection = load.answers[request_id]
                except httpx.TransportError as exc:
                    on_open_connection = type(exc).__name__
                await asyncio.sleep(0.01)
            fresh = await probe_readiness(base, load)

            slow_ids = await asyncio.gather(*slow)
            await slow_client.aclose()
            await asyncio.wait_for(asyncio.gather(*workers), 30)
        code = await asyncio.to_thread(proc.wait, DRAIN_TIMEOUT + 5)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, f"exit code {code}\n{output.read_text()[-3000:]}"
    assert took < DRAIN_TIMEOUT, f"took {took:.1f}s to exit"

    # Readiness: 503 from the signal on, wherever it could still be asked.
    gone = ("ConnectError", "RemoteProtocolError", "ReadError")
    assert on_open_connection == 503 or on_open_connection in gone, on_open_connection
    assert fresh[-1] in gone, fresh
    assert all(status == 503 for status in fresh[:-1]), fresh

    # Requests: every one the server began was answered whole: 2xx, or readiness (200
    # until the signal arrived, then 503).
    entries = journal(log)
    began = {line[1] for line in entries if line[:1] == ["request"] and line[2] == "start"}
    ended = {
        line[1]: int(line[3]) for line in entries if line[:1] == ["request"] and line[2] == "end"
    }
    assert began == set(ended), f"began but never answered: {sorted(began - set(ended))}"
    for request_id, status in ended.items():
        expected = (200, 503) if request_id in load.probes else range(200, 300)
        assert status in expected, (request_id, status)
    for request_id in began:
        assert load.answers.get(request_id) == ended[request_id], (
            f"{request_id}: the server answered {ended[request_id]}, the client saw "
            f"{load.answers.get(request_id) or load.refused.get(request_id)}"
        )
    assert [load.answers[request_id] for request_id in slow_ids] == [200] * len(slow)
    # Kept-alive clients were told to reconnect (Connection: close), so a request never
    # went out on a connection the server then closed: only new connections were refused.
    lost = {rid: error for rid, error in load.refused.items() if "ConnectError" not in error}
    assert not lost, f"sent, then the connection closed unanswered: {lost}"

    # Each worker is a member of its own name, the pod's plus a slot.
    members = {line[3] for line in entries if line[0] == "handled"}
    expected_members = {"pod-a"} if processes == 1 else {f"pod-a-{n}" for n in range(processes)}
    assert members == expected_members, members

    # Every worker logged its own shutdown, as JSON lines.
    said = [line for line in output.read_text().splitlines() if "readiness is DOWN" in line]
    assert len(said) == processes and all(line.startswith("{") for line in said), said

    # Messages: each confirmed order handled once and acked, or still waiting; none lost.
    handled = Counter(int(line[1]) for line in entries if line[0] == "handled")
    left = await pending(url)
    assert set(load.accepted) <= set(handled) | set(left), "a confirmed order was lost"
    assert not set(handled) & set(left), "handled but not acked: the acks were not flushed"
    assert set(handled) | set(left) <= load.accepted | load.unsure, "an order nobody published"
    assert max(handled.values()) == 1, "a message was handled twice in a graceful run"


def run_worker(target: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "millstream.cli", "worker", target]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def start_worker(target: str, env: dict[str, str], output: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "millstream.cli", "worker", target]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=output.open("wb"), stderr=subprocess.STDOUT
    )


async def test_a_worker_runs_the_consumers_with_health_and_metrics_only(tmp_path: Path) -> None:
    """``millstream worker module:ms``: the consumers handle messages, the listener on
    MILLSTREAM_PORT answers health and metrics but has no API, SIGTERM exits 0; pointed
    at the FastAPI app instead, it says what to point it at."""
    url = f"sqlite:///{tmp_path}/broker.db"
    log = tmp_path / "journal.log"
    port = free_port()
    env = {
        **os.environ,
        "MILLSTREAM_BROKER_URL": url,
        "WEB_APP_LOG": str(log),
        "MILLSTREAM_PORT": str(port),
    }
    wrong = await asyncio.to_thread(run_worker, "tests.procs.web_app:app", env)
    assert wrong.returncode == 2 and "not a Millstream" in wrong.stderr, wrong.stderr
    output = tmp_path / "worker.out"
    proc = start_worker("tests.procs.web_app:ms", env, output)
    try:
        publisher = connect(url)
        await publisher.connect()
        await publisher.publish(
            "orders", [OutgoingMessage(f'{{"n": {n}}}'.encode()) for n in range(20)]
        )
        await publisher.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def consumers_up() -> bool:
                try:
                    return (await http.get("/health/consumers")).status_code == 200
                except httpx.TransportError:
                    assert proc.poll() is None, output.read_text()
                    return False

            deadline = time.monotonic() + 30
            while not await consumers_up():
                assert time.monotonic() < deadline, "the worker never became healthy"
                await asyncio.sleep(0.05)
            await until(lambda: len([e for e in journal(log) if e[0] == "handled"]) == 20)
            assert (await http.get("/health/ready")).status_code == 200
            assert "millstream_messages_consumed_total" in (await http.get("/metrics")).text
            assert (await http.get("/api/v1/orders/1")).status_code == 404
            assert (await http.get("/admin/consumers")).status_code == 404
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, DRAIN_TIMEOUT + 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, output.read_text()[-3000:]
