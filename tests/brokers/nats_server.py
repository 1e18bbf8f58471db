"""A private ``nats-server -js`` for tests that kill, restart or lock the broker, and cleanup.

The shared NATS at 127.0.0.1:4222 must not be restarted under other tests,
so these tests start their own on a free port, from a config file written
into a temporary directory, with JetStream storing to ``-sd`` there: a
restart, even after SIGKILL, comes back with the streams it acknowledged.
Users (with permissions) go into the config file when given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.brokers.server_process import ServerProcess
from tests.conftest import REQUIRE_BROKERS

__all__ = [
    "MALFORMED",
    "NatsServer",
    "delete_streams",
    "ensure_topic_stream",
    "nats_server_binary",
    "publish_malformed",
    "publish_raw",
]


def nats_server_binary() -> str:
    """The ``nats-server`` executable; skips (or fails under CI) when there is none."""
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
    )
    if found is None:
        reason = "nats-server is not installed, so no private NATS can be started"
        if REQUIRE_BROKERS:
            pytest.fail(f"{reason}; MILLSTREAM_REQUIRE_BROKERS=1 makes this a failure")
        pytest.skip(reason)
    return found


class NatsServer(ServerProcess):
    """One ``nats-server -js`` on 127.0.0.1, restartable on the same port and store.

    ``users`` are ``{"user": ..., "password": ..., "permissions": {...}}``
    entries of one account with JetStream enabled, as the config file has them.
    """

    name = "nats-server"

    def __init__(self, directory: Path, *, users: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.directory = directory
        self.users = users
        self.binary = nats_server_binary()

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """``nats://`` URL of the server, with credentials when given."""
        auth = f"{user}:{password}@" if user else ""
        return f"nats://{auth}127.0.0.1:{self.port}"

    def _launch(self) -> subprocess.Popen[bytes]:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "nats.conf"
        lines = [
            f"listen: 127.0.0.1:{self.port}",
            f"jetstream {{ store_dir: {json.dumps(str(self.directory / 'store'))} }}",
        ]
        if self.users:
            lines.append(
                f"accounts {{ APP {{ jetstream: enabled, users: {json.dumps(self.users)} }} }}"
            )
        config.write_text("\n".join(lines) + "\n")
        log = open(self.directory / "nats.log", "ab")  # noqa: SIM115 - the process owns it
        process = subprocess.Popen(
            [self.binary, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return process

    def _exited(self, process: subprocess.Popen[bytes]) -> str:
        return (self.directory / "nats.log").read_text()[-2000:]

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                return conn.recv(4096).startswith(b"INFO")
        except OSError:
            return False


# Each header millstream reads from a message on its topic, malformed in one way:
# (header name, raw value), both as the bytes another producer could write.
MALFORMED: list[tuple[bytes, bytes]] = [
    (b"ms-attempt", b"abc"),
    (b"ms-attempt", b"-3"),
    (b"ms-published-at", b"abc"),
    (b"Nats-Msg-Id", b"id-\xff\xfe"),
    (b"ms-id", b"id-\xfe\xff"),
    (b"ms-key", b"key-\xff"),
    (b"h\xfcber", b"a header name that is not ASCII"),
]


async def publish_raw(
    url: str, subject: str, payload: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Publish one message with headers exactly as given, bytes that are not UTF-8 included.

    nats-py encodes header values from ``str``, so this speaks the protocol
    itself: CONNECT, HPUB, then PING; the PONG means the server has taken the
    message (and an R1 stream has stored it).
    """
    host, port = url.removeprefix("nats://").rsplit("@", 1)[-1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        if headers:
            block = b"NATS/1.0\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
            block += b"\r\n"
            size = f"{len(block)} {len(block) + len(payload)}".encode()
            writer.write(b"HPUB " + subject.encode() + b" " + size + b"\r\n" + block + payload)
        else:
            writer.write(f"PUB {subject} {len(payload)}\r\n".encode() + payload)
        writer.write(b"\r\nPING\r\n")
        await writer.drain()
        while (line := await reader.readline()) != b"PONG\r\n":
            if not line or line.startswith(b"-ERR"):
                raise AssertionError(f"the server refused a raw publish to {subject!r}: {line!r}")
    finally:
        writer.close()


async def ensure_topic_stream(url: str, topic: str) -> None:
    """Create the topic's stream as millstream would, so a raw publish to the topic is stored."""
    from millstream.brokers.nats.broker import NatsBroker
    from millstream.brokers.nats.names import Names

    broker = NatsBroker.from_url(url)
    await broker.connect()
    try:
        await broker.ensure_stream(Names(topic, ""))
    finally:
        await broker.close()


async def publish_malformed(url: str, topic: str) -> list[tuple[str, str, bytes]]:
    """Publish one message per entry of ``MALFORMED`` to ``topic`` (its stream made first).

    Returns (header, value as text, payload) of each; a payload is
    ``{"malformed": "<header>=<value>"}``.
    """
    await ensure_topic_stream(url, topic)
    sent = []
    for name, value in MALFORMED:
        field = name.decode(errors="backslashreplace")
        text = value.decode(errors="backslashreplace")
        payload = json.dumps({"malformed": f"{field}={text}"}).encode()
        await publish_raw(url, topic, payload, [(name, value)])
        sent.append((field, text, payload))
    return sent


async def delete_streams(url: str, topic: str) -> None:
    """Delete the streams a test on ``topic`` made (the topic's and its dead-letter streams)
    and its members' records and retry notes in ``MSHELD``."""
    import nats
    from nats.js.errors import NotFoundError

    from millstream.brokers.nats.names import HELD_STREAM, Names

    names = Names(topic, "")
    dead_prefix = names.dead_stream.rsplit("_", 2)[0] + "_"
    client = await nats.connect(url, allow_reconnect=False)
    try:
        js = client.jsm()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name == names.stream or name.startswith(dead_prefix):
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)
            elif name == HELD_STREAM:
                with contextlib.suppress(NotFoundError):
                    await js.purge_stream(name, subject=f"_ms.*.{names.stream}.>")
    finally:
        await client.close()
