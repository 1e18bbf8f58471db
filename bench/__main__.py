"""``make bench``: run each scenario in its own process and print one table.

Targets (2-core machine): the full runtime on the memory broker at
>= 100,000 msgs/s, the SQLite broker at >= 20,000 msgs/s consumed and acked
durably, and flat memory while consuming a backlog of 1,000,000. On Redis
(``MILLSTREAM_BENCH_REDIS_URL``, default redis://127.0.0.1:6379/0) millstream
must reach half the raw redis-py loop, consuming and publishing; the two run
alternately in the same invocation and the best of each is compared.
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

TARGETS = {"memory": 100_000, "sqlite": 20_000}
REDIS_RATIO = 0.5  # millstream / raw redis-py, consuming and publishing


def run(name: str, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="millstream-bench-") as workdir:
        out = subprocess.run(
            [sys.executable, "-m", "bench.scenarios", name, str(n), workdir],
            check=True,
            capture_output=True,
            text=True,
        )
    row: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("-n", type=int, default=20_000, help="messages per throughput row")
    parser.add_argument(
        "--backlog", type=int, default=1_000_000, help="messages waiting (0 skips the row)"
    )
    parser.add_argument(
        "--redis-n", type=int, default=100_000, help="messages per Redis row (0 skips them)"
    )
    parser.add_argument(
        "--redis-repeat", type=int, default=2, help="runs of each Redis row; the best counts"
    )
    parser.add_argument(
        "--http-requests", type=int, default=1000, help="timed HTTP reads per phase (0 skips)"
    )
    args = parser.parse_args()
    console = Console()

    table = Table(title=f"millstream consume throughput, {args.n:,} x ~200-byte JSON events")
    for column in ("row", "publish msgs/s", "consume+ack msgs/s", "target", "peak RSS MB"):
        table.add_column(column, justify="right" if column != "row" else "left")
    for name in ("memory", "memory-keyed", "sqlite"):
        console.print(f"running {name} ...", style="dim")
        row = run(name, args.n)
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

    if args.redis_n:
        redis_rows(console, args.redis_n, args.redis_repeat)

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

    if args.http_requests:
        from bench.http import report

        report(console, args.http_requests)


def redis_rows(console: Console, n: int, repeat: int) -> None:
    """Raw redis-py against millstream on the same stream setup, and their ratio."""
    if importlib.util.find_spec("redis") is None:
        console.print(
            "redis rows skipped: redis-py is not installed (pip install 'millstream[redis]')"
        )
        return
    from bench.redis_rows import reachable

    problem = reachable()
    if problem is not None:
        console.print(f"redis rows skipped: Redis is not reachable ({problem})")
        return
    best: dict[str, dict[str, float]] = {}
    for attempt in range(1, repeat + 1):
        for name in ("redis-raw", "redis"):  # alternate, so drift hits both alike
            console.print(f"running {name} ({attempt}/{repeat}) ...", style="dim")
            row = run(name, n)
            kept = best.setdefault(name, row)
            for column in ("publish_msgs_s", "consume_msgs_s"):
                kept[column] = max(kept[column], row[column])

    raw, ours = best["redis-raw"], best["redis"]
    table = Table(
        title=f"Redis Streams, {n:,} x ~200-byte JSON events, best of {repeat}",
        caption="raw: XREADGROUP COUNT 256, orjson, dict update, one XACK per batch; "
        "pipelined XADD. millstream: pydantic handler, at-least-once, default settings; "
        "publish_batch.",
    )
    for column in ("row", "raw redis-py msgs/s", "millstream msgs/s", "ratio", "target"):
        table.add_column(column, justify="right" if column != "row" else "left")
    for label, column in (("consume+ack", "consume_msgs_s"), ("publish", "publish_msgs_s")):
        ratio = ours[column] / raw[column]
        ok = ratio >= REDIS_RATIO
        table.add_row(
            label,
            f"{raw[column]:,.0f}",
            f"{ours[column]:,.0f}",
            f"[{'green' if ok else 'red'}]{ratio:.2f}x[/]",
            f">= {REDIS_RATIO}x",
        )
    console.print(table)


if __name__ == "__main__":
    main()
