"""``make bench``: run each scenario in its own process and print one table.

Targets (2-core machine): the full runtime on the memory broker at
>= 100,000 msgs/s, the SQLite broker at >= 20,000 msgs/s consumed and acked
durably, and flat memory while consuming a backlog of 1,000,000.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

from rich.console import Console
from rich.table import Table

TARGETS = {"memory": 100_000, "sqlite": 20_000}


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


if __name__ == "__main__":
    main()
