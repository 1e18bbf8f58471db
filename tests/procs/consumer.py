"""A consumer process for the crash and shutdown tests.

Appends ``start <n>`` and ``end <n>`` lines to a log with unbuffered writes,
so what it did survives SIGKILL. Usage:
``python -m tests.procs.consumer BROKER_URL TOPIC GROUP LOG SLEEP CONCURRENCY``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

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

    os.write(fd, b"ready\n")
    asyncio.run(ms.serve())
    os.write(fd, b"exit\n")


if __name__ == "__main__":
    main()
