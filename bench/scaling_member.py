"""One member process of the scale-out rows (``bench/scaling.py``).

``python -m bench.scaling_member URL TOPIC GROUP MEMBER LOG CONCURRENCY BURN``
builds a millstream consumer named ``MEMBER`` in ``GROUP``, prints ``ready``, waits
for a line on stdin (so every member of a run starts at once), then consumes
until SIGTERM. Its handler burns ``BURN`` seconds of CPU per message (a busy
loop, not a sleep: the work scales with cores, not with waiting) and appends
``key sequence started ended`` (wall-clock seconds) to ``LOG`` with one
unbuffered write, so the parent can count what was handled while it runs,
and ``cpu <seconds>`` when it stops: its CPU time from the start signal on.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from millstream import Message, Millstream


def burn(seconds: float) -> None:
    """Keep the CPU busy for ``seconds``."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def main() -> None:
    url, topic, group, member, log_path, concurrency, seconds = sys.argv[1:8]
    work = float(seconds)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    ms = Millstream(url, member=member)

    @ms.consumer(topic, group=group, concurrency=int(concurrency))  # ordered by the publish key
    async def handle(event: dict[str, int], msg: Message) -> None:
        started = time.time()
        burn(work)
        os.write(fd, f"{msg.key} {event['seq']} {started:.6f} {time.time():.6f}\n".encode())

    print("ready", flush=True)
    sys.stdin.readline()
    started = time.process_time()
    asyncio.run(ms.serve())
    os.write(fd, f"cpu {time.process_time() - started:.3f}\n".encode())


if __name__ == "__main__":
    main()
