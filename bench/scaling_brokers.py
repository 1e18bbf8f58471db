"""Where the scale-out rows run: one :class:`Scaled` per broker that can span processes.

The in-process memory broker cannot, so it has no row. SQLite gets a fresh
file per run; Redis, RabbitMQ and NATS are the bench's servers
(``bench/<broker>_rows.py``: ``MILLSTREAM_BENCH_<BROKER>_URL``), with a fresh
topic per run deleted afterwards; Kafka is the bench's Tansu, its topics
created with :data:`KAFKA_PARTITIONS` partitions so four members each get
some.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

KAFKA_PARTITIONS = 8
BROKERS = ("sqlite", "redis", "rabbitmq", "nats", "kafka")

__all__ = ["BROKERS", "KAFKA_PARTITIONS", "Scaled", "group_of", "scaled"]


def group_of(topic: str) -> str:
    """The group of a run: its own, as its topic is (a Kafka group spans topics)."""
    return f"{topic}-g"


async def _nothing(topic: str) -> None:
    return None


@dataclass(frozen=True)
class Scaled:
    """One broker as the scale-out rows use it."""

    name: str
    url: Callable[[str], str]
    """The URL the publisher and every member of a run on this topic open."""
    prepare: Callable[[str], Coroutine[None, None, None]] = _nothing
    """Run before the backlog is published: declare what must exist to keep it."""
    drop: Callable[[str], Coroutine[None, None, None]] = _nothing
    """Run after the run: delete what it left on the broker."""

    @property
    def port(self) -> int | None:
        """The port of the broker's server on this machine, if it has one (SQLite has not)."""
        parts = urlsplit(self.url("probe"))
        try:
            port = parts.port
        except ValueError:  # several hosts
            return None
        return port if parts.hostname in ("127.0.0.1", "localhost", "::1") else None


def scaled(name: str, workdir: Path) -> Scaled | str:
    """The broker ``name`` ready for the rows, or why it is skipped."""
    if name == "sqlite":
        return Scaled(name, lambda topic: f"sqlite:///{workdir}/{topic}.db")
    rows_module = f"bench.{name}_rows"
    if importlib.util.find_spec(rows_module) is None:
        return f"no {rows_module}"
    rows = importlib.import_module(rows_module)
    if importlib.util.find_spec(rows.CLIENT) is None:
        return f"{rows.CLIENT} is not installed (pip install 'millstream[{name}]')"
    problem: str | None = rows.reachable()
    if problem is not None:
        return f"the broker is not reachable ({problem})"
    if name == "kafka":
        url = _with_query(rows.url(), partitions=str(KAFKA_PARTITIONS))
        return Scaled(name, lambda topic: url)
    if name == "rabbitmq":
        # RabbitMQ keeps a message only for the group queues that exist when it is published.
        return Scaled(
            name,
            lambda topic: str(rows.URL),
            prepare=lambda topic: rows.declare(topic, group_of(topic)),
            drop=lambda topic: rows.delete(topic, group=group_of(topic)),
        )
    return Scaled(name, lambda topic: str(rows.URL), drop=rows.delete)


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | params
    return urlunsplit(parts._replace(query=urlencode(query)))
