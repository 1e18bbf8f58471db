"""The SQLite broker in the conformance suite: one file in the test's directory.

A crash and a cut both close the connection under the broker (SQLite has no
server to lose; what a dead member held waits out its lease). Child
processes and the command line open the same file; malformed and foreign
rows are written with the sqlite3 module (tests/brokers/sqlite_raw.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from millstream.brokers.base import Broker
from millstream.brokers.sqlite.broker import SqliteBroker
from tests.brokers import sqlite_raw
from tests.conformance.factory import LEASE, BrokerFactory, Malformed

LACKS = {
    "blackhole": "it has no network connection to go silent (each connection opens the file)",
    "durable_server": "it has no server to kill (each connection opens the file itself)",
    "refusing": "it has no credentials to refuse (the file's permissions guard it)",
    "unreachable": "it has no server to be out of reach (connect creates the file if need be)",
}

# A dead letter is a delivery row in state 'dead'; its group is the groups row it points at.
_DEAD_ROWS = """SELECT count(*) FROM "{table}" AS d JOIN groups AS g ON g.gid = d.gid
    WHERE g.topic = ? AND g.name = ? AND d.state = 'dead'"""


def factory(tmp_path: Path) -> BrokerFactory:
    path = tmp_path / "broker.db"
    url = f"sqlite:///{path}?lease={LEASE:g}"

    async def publish_malformed(topic: str) -> list[Malformed]:
        sent = await asyncio.to_thread(sqlite_raw.malformed, path, topic)
        return [Malformed(case.field, case.shown, payload) for case, payload in sent]

    async def publish_raw(topic: str, payload: bytes) -> None:
        await asyncio.to_thread(sqlite_raw.foreign, path, topic, payload)

    def dead_rows(table: str, topic: str, group: str) -> int:
        with closing(sqlite3.connect(path)) as db:
            found = db.execute(_DEAD_ROWS.format(table=table), (topic, group)).fetchone()
        return int(found[0])

    async def held_at(table: str, topic: str, group: str) -> int:
        return await asyncio.to_thread(dead_rows, table, topic, group)

    def leased(seconds: float) -> Broker:
        return SqliteBroker.from_url(f"sqlite:///{path}?lease={seconds:g}")

    def cut(broker: Broker) -> None:
        assert isinstance(broker, SqliteBroker)
        broker.cut()

    return BrokerFactory(
        "sqlite",
        lambda: SqliteBroker.from_url(url),
        cut,
        cut,
        SqliteBroker.capabilities,
        publish_malformed=publish_malformed,
        publish_raw=publish_raw,
        process_url=f"sqlite:///{path}",
        group_url=url,
        leased=leased,
        says_back=lambda name, topic: f"held by {name}, which stopped without releasing them",
        says_expired=lambda name, topic: (
            f"held by {name}, which stopped without releasing them (its lease of {LEASE:g}s"
        ),
        held_at=held_at,
        lacks=LACKS,
    )
