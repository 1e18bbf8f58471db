"""A consumer process for the crash and shutdown tests.

Appends ``start <n>`` and ``end <n>`` lines to a log with unbuffered writes,
so what it did survives SIGKILL. Usage:
``python -m tests.procs.consumer BROKER_URL TOPIC GROUP LOG SLEEP CONCURRENCY``.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import sys
from typing import Any

from millstream import Message, Millstream


def main() -> None:
    url, topic, group, log_path, sleep, concurrency = sys.argv[1:7]
    delay = float(sleep)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    ms = Millstream(url, drain_timeout=10, settle_interval=0.01)

    @ms.consumer(topic, group=group, concurrency=int(concurrency))
    async def handle(event: dict[str, int], msg: Message) -> None:
        os.write(fd, f"start {event['n']} {msg.attempt}\n".encode())
        await asyncio.sleep(delay)
        os.write(fd, f"end {event['n']} {msg.attempt}\n".encode())

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, _print_tasks)
        await ms.serve()

    os.write(fd, b"ready\n")
    asyncio.run(serve())
    os.write(fd, b"exit\n")


def _print_tasks() -> None:
    """On SIGUSR1 (a stop that hangs): every task's stack to stderr, then exit."""
    faulthandler.dump_traceback(all_threads=True)
    for task in asyncio.all_tasks():
        print(f"task {task.get_name()}:", file=sys.stderr)
        awaited: Any = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
            if frame is None:
                print(f"  awaiting {awaited!r}", file=sys.stderr)
                break
            print(
                f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}",
                file=sys.stderr,
            )
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    sys.stderr.flush()
    os._exit(3)


if __name__ == "__main__":
    main()
