"""Replaying dead letters at a capped rate: one pace for the admin API and the CLI.

A replay puts letters back into their group as fresh deliveries; a large
queue replayed at once would hit the handlers (and whatever they call) with
a burst they failed on the first time. Letters go back in chunks of at most
a second's worth, each chunk waiting until the letters *actually* replayed
so far fit the rate: ids that are not (or no longer) in the queue cost no
time, so asking for 10,000 missing ids answers at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from millstream.brokers.base import DeadLetterQueue

__all__ = ["replay_paced"]

_CHUNK = 100


async def replay_paced(queue: DeadLetterQueue, ids: Sequence[str] | None, rate: float) -> int:
    """Replay ``ids`` (or every letter there is now) at most ``rate`` a second; returns
    how many were replayed. Letters that die again meanwhile are not replayed again."""
    size = max(1, min(_CHUNK, int(rate)))
    started = time.monotonic()
    replayed = 0

    async def pace() -> None:
        delay = started + replayed / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    if ids is not None:
        for start in range(0, len(ids), size):
            await pace()
            replayed += await queue.replay(ids[start : start + size])
        return replayed
    remaining = await queue.count()  # as many as there are now, not what dies meanwhile
    while remaining > 0:
        await pace()
        chunk = [letter.id for letter in await queue.list(limit=min(size, remaining))]
        done = await queue.replay(chunk) if chunk else 0
        if not done:
            break
        replayed += done
        remaining -= done
    return replayed
