"""Several ``millstream run examples.orders:app`` processes sharing one broker and one database.

:func:`fleet_broker` gives each test a broker of its own, so the example's
fixed topic and group names meet nobody else's: a private Redis, NATS or
Tansu server, or a fresh RabbitMQ virtual host on the shared node. Each
comes with the lease its members hold messages under (Kafka: the session
timeout; RabbitMQ has none, a dead connection returns what it held).
:class:`Instance` is one served process, read through its HTTP API and
``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.brokers.nats_server import NatsServer
from tests.brokers.redis_server import RedisServer
from tests.brokers.server_process import free_port
from tests.brokers.tansu import Tansu
from tests.conftest import REQUIRE_BROKERS, require_service
from tests.examples.served import eventually, ready, serve

__all__ = ["BROKERS", "FleetBroker", "Instance", "fleet_broker", "start_fleet", "stop_fleet"]

BROKERS = ("redis", "rabbitmq", "nats", "kafka")
LEASE = 2.0
KAFKA = (
    "partitions=8&idempotence=false&batch_size=1&linger=0"
    f"&session_timeout={LEASE:g}&heartbeat=0.2&rebalance_timeout=1"
)
"""Tansu's quirks (tests/brokers/tansu.py), a session as short as the other brokers' lease,
and a rebalance timeout three served processes on two cores can rejoin within."""


@dataclass(frozen=True)
class FleetBroker:
    """A broker of the test's own: the URL every instance opens, and its lease in seconds
    (``None``: no lease, what a dead member held comes back when its connection drops)."""

    url: str
    lease: float | None


@contextlib.contextmanager
def fleet_broker(name: str, directory: Path) -> Iterator[FleetBroker]:
    """A fresh broker ``name`` for one test; removed (or killed) afterwards."""
    if name == "redis":
        with RedisServer(directory / "redis") as redis:
            yield FleetBroker(f"{redis.url}?lease={LEASE:g}", LEASE)
    elif name == "nats":
        with NatsServer(directory / "nats") as nats:
            yield FleetBroker(f"{nats.url()}?lease={LEASE:g}", LEASE)
    elif name == "kafka":
        with Tansu() as tansu:
            yield FleetBroker(tansu.url(KAFKA), LEASE)
    elif name == "rabbitmq":
        with _vhost() as vhost:
            yield FleetBroker(f"amqp://guest:guest@127.0.0.1:5672/{vhost}", None)
    else:
        raise ValueError(f"no fleet broker {name!r}; expected one of {', '.join(BROKERS)}")


@contextlib.contextmanager
def _vhost() -> Iterator[str]:
    """A virtual host of the shared RabbitMQ node, for the guest user, deleted afterwards."""
    require_service("RabbitMQ", "127.0.0.1", 5672)
    name = f"ms-fleet-{uuid.uuid4().hex[:8]}"
    try:
        _rabbitmqctl("add_vhost", name)
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = f"rabbitmqctl cannot add a virtual host ({exc})"
        if REQUIRE_BROKERS:
            pytest.fail(f"{reason}; MILLSTREAM_REQUIRE_BROKERS=1 makes this a failure")
        pytest.skip(reason)
    try:
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        _rabbitmqctl("delete_vhost", name)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@dataclass
class Instance:
    """One served order service: its member name, process, client and log."""

    member: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    http: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    async def metric(self, name: str, **labels: str) -> float:
        """The sample ``name`` with ``labels`` in this instance's ``/metrics``."""
        text = (await self.http.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return float(sample.value)
        raise AssertionError(f"{self.member}: no {name} {labels} in /metrics")

    def tail(self) -> str:
        return f"--- {self.member}:\n" + self.log.read_text(errors="replace")[-3000:]


async def start_fleet(env: dict[str, str], count: int, directory: Path) -> list[Instance]:
    """``count`` instances named ``orders-a``, ``orders-b``, ... on ports of their own, each
    answering ``/health/consumers`` 200 (every consumer running) before this returns."""
    instances = []
    for n in range(count):
        member = f"orders-{chr(ord('a') + n)}"
        port = free_port()
        log = directory / f"{member}.log"
        with log.open("w") as out:
            process = serve(port, {**os.environ, **env, "MILLSTREAM_MEMBER": member}, out)
        instances.append(Instance(member, port, process, log))
    for instance in instances:
        await eventually(lambda i=instance: ready(i.http), True, within=60)
        await eventually(lambda i=instance: _consumers_up(i), True, within=60)
    return instances


async def _consumers_up(instance: Instance) -> bool:
    return (await instance.http.get("/health/consumers")).status_code == 200


async def stop_fleet(instances: list[Instance]) -> dict[str, int | None]:
    """SIGTERM every instance still running; their exit codes by member (``None``: killed
    here after 30 s, or earlier by the test)."""
    codes: dict[str, int | None] = {}
    for instance in instances:
        if instance.process.poll() is None:
            instance.process.send_signal(signal.SIGTERM)
    for instance in instances:
        await instance.http.aclose()
        try:
            code = await asyncio.to_thread(instance.process.wait, 30)
        except subprocess.TimeoutExpired:
            instance.process.kill()
            await asyncio.to_thread(instance.process.wait)
            code = None
        codes[instance.member] = code
    return codes
