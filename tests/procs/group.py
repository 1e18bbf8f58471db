"""Driving ``tests.procs.consumer`` processes in one group, and reading what they logged.

Each process appends ``start <n> <attempt>`` and ``end <n> <attempt>`` lines;
a process killed mid-write may leave its last line torn, so only whole
lines count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["ends", "ready", "spawn", "starts", "stop"]


def spawn(
    url: str,
    topic: str,
    log: Path,
    sleep: float,
    env: dict[str, str] | None = None,
    group: str = "billing",
) -> subprocess.Popen[bytes]:
    """One member of ``group`` with concurrency 4, sleeping ``sleep`` per message.

    ``env`` adds to the environment it inherits.
    """
    command = [sys.executable, "-m", "tests.procs.consumer", url, topic, group]
    environment = {**os.environ, **(env or {})}
    with log.with_suffix(".stderr").open("ab") as stderr:
        return subprocess.Popen(
            [*command, str(log), str(sleep), "4"], cwd=ROOT, stderr=stderr, env=environment
        )


def _lines(log: Path, kind: str) -> list[tuple[int, int]]:
    lines = log.read_text().splitlines() if log.exists() else []
    fields = [line.split() for line in lines]
    return [(int(f[1]), int(f[2])) for f in fields if len(f) == 3 and f[0] == kind]


def ends(log: Path) -> list[tuple[int, int]]:
    """(number, attempt) of every handler that finished, in the order they did."""
    return _lines(log, "end")


def starts(log: Path) -> set[int]:
    return {n for n, _ in _lines(log, "start")}


def running(log: Path) -> set[int]:
    """The numbers whose handler started and has not finished."""
    return starts(log) - {n for n, _ in ends(log)}


def ready(logs: list[Path]) -> bool:
    return all(log.exists() and "ready" in log.read_text() for log in logs)


def stop(processes: list[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """SIGTERM every process still running; each must drain and exit 0."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)  # tests.procs.consumer: its tasks' stacks
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # its event loop itself is stuck
                process.kill()
                process.wait()
            code = None
        assert code == 0, _stderr_tail(process)


def _stderr_tail(process: subprocess.Popen[bytes]) -> str:
    log = next(Path(a) for a in process.args if str(a).endswith(".log"))  # type: ignore[union-attr]
    log = log.with_suffix(".stderr")
    text = log.read_text(errors="replace") if log.exists() else ""
    return f"exit {process.returncode}; its stderr ends:\n" + text[-6000:]
