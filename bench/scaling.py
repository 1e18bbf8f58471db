"""Scale-out rows: one group's backlog consumed by 1, 2 and 4 member processes per broker.

``python -m bench.scaling`` (also part of ``make bench``). For each broker
that can span processes (SQLite, Redis, RabbitMQ, NATS, Kafka), and each
process count: a fresh topic gets a backlog of keyed messages (the
``Workload``: 3,000 messages, 256 keys in turn), then that many
``bench/scaling_member.py`` processes, each a millstream consumer of one
fresh group with its own ``member=`` name, are told to start at once and
consume it. Each handler burns 1 ms of CPU. The throughput is the backlog
over the time from the first message handled to the last. Every cell runs
``repeat`` times, round after round; the best counts, and the ratio is the
best against the best of one process of the same broker in the same
invocation. Target on 2 cores: 2 processes >= 1.7x one. Per-key order is
checked over the merged logs: where the broker's ``Capabilities.key_order``
promises it, a broken pair is shown red; elsewhere it is shown for what it
is. The chart goes to ``docs/scaling.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console

from bench.scaling_brokers import BROKERS, Scaled, group_of, scaled
from bench.scaling_cpu import CpuWatch, Spent, listening
from bench.scaling_logs import Progress, handled, member_cpu
from bench.scaling_results import Run, Workload, cells, table
from millstream import Millstream
from millstream.brokers import connect

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "docs" / "scaling.png"
PROCESSES = (1, 2, 4)
CHUNK = 1000
DISTURBED = 0.3

__all__ = ["main", "report", "run_broker"]


def run_broker(target: Scaled, workload: Workload, workdir: Path, console: Console) -> list[Run]:
    """The broker's runs: 1, 2 and 4 processes, one fresh topic and group each. A run that
    fails is told and left out; the others go on. A run that other programs disturbed (they
    kept ``DISTURBED`` cores or more busy) is run once more."""
    runs = []
    for processes in PROCESSES:
        for _ in range(2):
            try:
                run = _one(target, processes, workload, workdir)
            except RuntimeError as exc:
                console.print(f"[red]scale-out {target.name} x {processes} failed:[/] {exc}")
                break
            runs.append(run)
            if run.spent.others < DISTURBED:
                break
            console.print(
                f"scale-out {target.name} x {processes}: other programs kept "
                f"{run.spent.others:.2f} cores busy; once more",
                style="dim",
            )
    return runs


def _one(target: Scaled, processes: int, workload: Workload, workdir: Path) -> Run:
    topic = f"scale-{uuid.uuid4().hex[:10]}"
    url = target.url(topic)
    promised = connect(url).capabilities.key_order
    asyncio.run(target.prepare(topic))
    try:
        asyncio.run(_publish(url, topic, workload))
        logs = [workdir / f"{topic}-{n}.log" for n in range(processes)]
        members = [_spawn(url, topic, f"{topic}-m{n}", log, workload) for n, log in enumerate(logs)]
        try:
            for member in members:
                _wait_ready(member)
            for member in members:  # at once: no member gets a head start
                assert member.stdin is not None
                member.stdin.write(b"go\n")
                member.stdin.flush()
            server = listening(target.port) if target.port else []
            within = 30 + workload.backlog / 100
            spent = _wait_done(logs, workload.backlog, members, server, within)
        finally:
            _stop(members)
    finally:
        asyncio.run(target.drop(topic))
    per_member = [handled(log) for log in logs]
    cpus = [member_cpu(log) for log in logs]
    return Run(
        target.name,
        processes,
        workload,
        [r for records in per_member for r in records],
        [len(records) for records in per_member],
        None if None in cpus else sum(c for c in cpus if c is not None),
        spent,
        promised,
    )


async def _publish(url: str, topic: str, workload: Workload) -> None:
    """The backlog: ``{"seq": n}``, keyed ``k000``, ``k001``, ... in turn."""
    ms = Millstream(url)
    await ms.broker.connect()
    keys = workload.keys
    try:
        for start in range(0, workload.backlog, CHUNK):
            values = [{"seq": n} for n in range(start, min(start + CHUNK, workload.backlog))]
            await ms.publish_batch(topic, values, key_by=lambda v: f"k{v['seq'] % keys:03d}")
    finally:
        await ms.broker.close()


def _spawn(
    url: str, topic: str, member: str, log: Path, workload: Workload
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bench.scaling_member", url, topic, group_of(topic), member]
    command += [str(log), str(workload.concurrency), str(workload.burn)]
    with log.with_suffix(".stderr").open("wb") as stderr:
        return subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )


def _wait_ready(member: subprocess.Popen[bytes]) -> None:
    assert member.stdout is not None
    if member.stdout.readline().strip() != b"ready":
        member.wait(timeout=10)
        raise RuntimeError(f"a member exited before it was ready: {_stderr_of(member)}")


def _wait_done(
    logs: list[Path],
    backlog: int,
    members: list[subprocess.Popen[bytes]],
    server: list[int],
    within: float,
) -> Spent:
    """Wait until the members handled every message of the backlog; returns the CPU the
    broker's server and the rest of the machine spent meanwhile, from the first message
    handled to the last."""
    deadline = time.monotonic() + within
    progress = Progress(logs)
    seen = 0
    watch: CpuWatch | None = None
    while time.monotonic() < deadline:
        seen = progress.count()
        if seen and watch is None:
            watch = CpuWatch([m.pid for m in members], server)
        if seen >= backlog:
            return watch.spent() if watch is not None else Spent(0.0, 0.0)
        if any(m.poll() is not None for m in members):
            died = next(m for m in members if m.poll() is not None)
            raise RuntimeError(f"a member exited while consuming: {_stderr_of(died)}")
        time.sleep(0.05)
    raise RuntimeError(f"only {seen} of {backlog} messages were handled within {within:.0f}s")


def _stop(members: list[subprocess.Popen[bytes]]) -> None:
    for member in members:
        if member.poll() is None:
            member.send_signal(signal.SIGTERM)
    for member in members:
        try:
            member.wait(timeout=30)
        except subprocess.TimeoutExpired:
            member.kill()
            member.wait()


def _stderr_of(member: subprocess.Popen[bytes]) -> str:
    log = Path(str(member.args[-3])).with_suffix(".stderr")  # type: ignore[index]
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no stderr)"


def report(
    console: Console,
    workload: Workload,
    brokers: list[str],
    *,
    repeat: int = 2,
    chart: Path | None = CHART,
) -> list[Run]:
    """Run the rows of ``brokers`` ``repeat`` times over, print the table (best of each cell)
    and draw the chart; returns every run."""
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="millstream-scale-") as workdir:
        targets = []
        for name in brokers:
            target = scaled(name, Path(workdir))
            if isinstance(target, str):
                console.print(f"scale-out {name} rows skipped: {target}")
            else:
                targets.append(target)
        for attempt in range(1, repeat + 1):  # round after round, so drift hits every cell
            for target in targets:
                console.print(
                    f"running scale-out {target.name} ({attempt}/{repeat}) ...", style="dim"
                )
                runs += run_broker(target, workload, Path(workdir), console)
    if not runs:
        return runs
    found = cells(runs)
    console.print(table(found, workload, repeat))
    if chart is not None:
        from bench.scaling_chart import draw

        draw(found, chart, workload, cores=os.cpu_count() or 1)
        console.print(f"chart: {chart}")
    return runs


def main() -> None:
    default = Workload()
    parser = argparse.ArgumentParser(prog="python -m bench.scaling")
    parser.add_argument("--backlog", type=int, default=default.backlog, help="messages per run")
    parser.add_argument("--keys", type=int, default=default.keys, help="publish keys, in turn")
    parser.add_argument(
        "--concurrency", type=int, default=default.concurrency, help="handlers per member"
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of each cell; the best counts")
    everything = ",".join(BROKERS)
    parser.add_argument("--brokers", default=everything, help=f"comma-separated ({everything})")
    parser.add_argument("--chart", type=Path, default=CHART, help="where the PNG chart goes")
    parser.add_argument("--no-chart", action="store_true", help="draw no chart")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    workload = Workload(args.backlog, args.keys, args.concurrency)
    brokers = [b for b in args.brokers.split(",") if b]
    chart = None if args.no_chart else args.chart
    runs = report(Console(), workload, brokers, repeat=args.repeat, chart=chart)
    if args.json:
        args.json.write_text(json.dumps([run.figures() for run in runs], indent=1))


if __name__ == "__main__":
    main()
