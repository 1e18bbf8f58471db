"""``make bench``: run each scenario in its own process and print one table.

Targets (2-core machine): the full runtime on the memory broker at
>= 100,000 msgs/s, the SQLite broker at >= 20,000 msgs/s consumed and acked
durably, and flat memory while consuming a backlog of 1,000,000. On each
real broker (``bench/<broker>_rows.py``: Redis, RabbitMQ, NATS, Kafka)
millstream is timed against the raw client loop a careful engineer would
write; the two run alternately in the same invocation, the best of each is
compared, and the ratio must reach that broker's target. The scale-out rows
(``bench/scaling.py``) consume one group's backlog with 1, 2 and 4 member
processes on every broker that spans processes: 2 processes >= 1.7x one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile

from rich.console import Console
from rich.table import Table

from bench import scaling
from bench.scaling_brokers import BROKERS
from bench.scaling_results import Workload
from bench.scenarios import BROKER_ROWS

TARGETS = {"memory": 100_000, "sqlite": 20_000}


def run(name: str, n: int, *extra: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="millstream-bench-") as workdir:
        out = subprocess.run(
            [sys.executable, "-m", "bench.scenarios", name, str(n), workdir, *extra],
            check=True,
            capture_output=True,
            text=True,
        )
    row: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "-n", type=int, default=20_000, help="messages per throughput row (0 skips them)"
    )
    parser.add_argument(
        "--backlog", type=int, default=1_000_000, help="messages waiting (0 skips the row)"
    )
    parser.add_argument(
        "--broker-n",
        type=int,
        default=100_000,
        help="messages per Redis, RabbitMQ, NATS and Kafka row (0 skips them)",
    )
    parser.add_argument(
        "--brokers",
        default=",".join(BROKER_ROWS),
        help=f"which broker rows to run, comma-separated (default {','.join(BROKER_ROWS)})",
    )
    parser.add_argument(
        "--broker-repeat", type=int, default=2, help="runs of each broker row; the best counts"
    )
    parser.add_argument(
        "--store-n", type=int, default=5_000, help="messages per idempotent-store row (0 skips)"
    )
    parser.add_argument(
        "--http-requests", type=int, default=1000, help="timed HTTP reads per phase (0 skips)"
    )
    parser.add_argument(
        "--scale-backlog",
        type=int,
        default=Workload().backlog,
        help="messages per scale-out run: 1, 2 and 4 member processes per broker (0 skips)",
    )
    parser.add_argument(
        "--scale-repeat", type=int, default=2, help="runs of each scale-out row; the best counts"
    )
    args = parser.parse_args()
    console = Console()

    if args.n:
        throughput_rows(console, args.n)

    for broker in args.brokers.split(","):
        if args.broker_n and broker:
            broker_rows(console, broker, args.broker_n, args.broker_repeat)

    if args.scale_backlog:
        scaling.report(
            console, Workload(backlog=args.scale_backlog), list(BROKERS), repeat=args.scale_repeat
        )

    if args.backlog:
        console.print(f"running sqlite-backlog with {args.backlog:,} waiting ...", style="dim")
        row = run("sqlite-backlog", args.backlog)
        growth = row["rss_at_90pct_mb"] - row["rss_at_10pct_mb"]
        console.print(
            f"backlog {args.backlog:,}: published {row['publish_msgs_s']:,.0f} msgs/s, "
            f"consumed {row['consume_msgs_s']:,.0f} msgs/s; "
            f"RSS at 10% {row['rss_at_10pct_mb']:.0f} MB, at 90% {row['rss_at_90pct_mb']:.0f} MB "
            f"(growth {growth:+.1f} MB), "
            f"peak {row['peak_rss_mb']:.0f} MB"
        )

    if args.store_n:
        store_rows(console, args.store_n)

    if args.http_requests:
        from bench.http import report

        report(console, args.http_requests)


def throughput_rows(console: Console, n: int) -> None:
    """The runtime on the memory and SQLite brokers, against the absolute targets."""
    table = Table(title=f"millstream consume throughput, {n:,} x ~200-byte JSON events")
    for column in ("row", "publish msgs/s", "consume+ack msgs/s", "target", "peak RSS MB"):
        table.add_column(column, justify="right" if column != "row" else "left")
    for name in ("memory", "memory-keyed", "sqlite"):
        console.print(f"running {name} ...", style="dim")
        row = run(name, n)
        target = TARGETS.get(name)
        ok = target is None or row["consume_msgs_s"] >= target
        table.add_row(
            name,
            f"{row['publish_msgs_s']:,.0f}",
            f"[{'green' if ok else 'red'}]{row['consume_msgs_s']:,.0f}[/]",
            f">= {target:,}" if target else "",
            f"{row['peak_rss_mb']:.0f}",
        )
    console.print(table)


def broker_rows(console: Console, broker: str, n: int, repeat: int) -> None:
    """The raw client against millstream on one broker, alternating, and their ratios.

    ``bench/<broker>_rows.py`` names the client it needs (``CLIENT``), says
    whether the broker answers (``reachable()``), and gives the two scenarios
    (``<broker>-raw`` and ``<broker>``), the targets (``RATIOS``, by column)
    and the table's ``TITLE`` and ``CAPTION``.
    """
    spec = importlib.util.find_spec(f"bench.{broker}_rows")
    if spec is None:
        return
    rows = importlib.import_module(f"bench.{broker}_rows")
    if importlib.util.find_spec(rows.CLIENT) is None:
        console.print(
            f"{broker} rows skipped: {rows.CLIENT} is not installed "
            f"(pip install 'millstream[{broker}]')"
        )
        return
    problem = rows.reachable()
    if problem is not None:
        console.print(f"{broker} rows skipped: the broker is not reachable ({problem})")
        return
    best: dict[str, dict[str, float]] = {}
    for attempt in range(1, repeat + 1):
        for name in (f"{broker}-raw", broker):  # alternate, so drift hits both alike
            console.print(f"running {name} ({attempt}/{repeat}) ...", style="dim")
            row = run(name, n)
            kept = best.setdefault(name, row)
            for column in rows.RATIOS:
                kept[column] = max(kept[column], row[column])

    raw, ours = best[f"{broker}-raw"], best[broker]
    table = Table(
        title=f"{rows.TITLE}, {n:,} x ~200-byte JSON events, best of {repeat}", caption=rows.CAPTION
    )
    for column in ("row", "raw client msgs/s", "millstream msgs/s", "ratio", "target"):
        table.add_column(column, justify="right" if column != "row" else "left")
    for column, target in rows.RATIOS.items():
        ratio = ours[column] / raw[column]
        table.add_row(
            COLUMN_LABELS[column],
            f"{raw[column]:,.0f}",
            f"{ours[column]:,.0f}",
            f"[{'green' if ratio >= target else 'red'}]{ratio:.2f}x[/]",
            f">= {target}x",
        )
    console.print(table)


def store_rows(console: Console, n: int) -> None:
    """Idempotent handlers: one store transaction per message (ledger entry plus one insert)."""
    table = Table(
        title=f"idempotent handler, {n:,} messages from the memory broker, concurrency 8",
        caption="each message: BEGIN, ledger insert, one row insert, COMMIT, then the ack",
    )
    for column in ("store", "consume+ack msgs/s"):
        table.add_column(column, justify="right" if column != "store" else "left")
    rows = [("sqlite, synchronous=FULL (default)", "store-sqlite-full", ())]
    rows.append(("sqlite, synchronous=NORMAL", "store-sqlite-normal", ()))
    database = _bench_database()
    if database is not None:
        rows.append(("postgresql", "store-postgres", (database.url,)))
    try:
        for label, name, extra in rows:
            console.print(f"running {name} ...", style="dim")
            table.add_row(label, f"{run(name, n, *extra)['consume_msgs_s']:,.0f}")
    finally:
        if database is not None:
            database.drop()
    console.print(table)


class _Database:
    """A scratch PostgreSQL database for the store row, dropped afterwards."""

    ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = f"postgresql://postgres@127.0.0.1:5432/{name}"

    def drop(self) -> None:
        _admin(self.ADMIN, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _admin(url: str, sql: str) -> None:
    import asyncio

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(url, timeout=2)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def _bench_database() -> _Database | None:
    """A fresh database on the local PostgreSQL, or ``None`` when there is none to use."""
    if importlib.util.find_spec("asyncpg") is None:
        return None
    import uuid

    database = _Database(f"millstream_bench_{uuid.uuid4().hex[:8]}")
    try:
        _admin(_Database.ADMIN, f'CREATE DATABASE "{database.name}"')
    except Exception:
        return None
    return database


COLUMN_LABELS = {"consume_msgs_s": "consume+ack", "publish_msgs_s": "publish"}


if __name__ == "__main__":
    main()
