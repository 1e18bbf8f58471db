"""Cancelling tasks so that they really end."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]

# How long a cancelled task may go on before it is cancelled again.
_AGAIN_AFTER = 0.1


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and return once every one has ended; their outcomes are discarded.

    A cancellation can be lost below us: on Python 3.11, ``asyncio.wait_for``
    returns a result that arrived in the same loop pass as the cancellation
    (bpo-42130), and redis-py sends every command through it. A task that
    lost one (a fetch loop, say) runs on as if nothing happened, so a task
    still running after a moment is cancelled again.

    The caller's own cancellation while it waits does not cut this short:
    it is raised once every task has ended.
    """
    running = [task for task in tasks if not task.done()]
    cancelled = False
    while running:
        for task in running:
            task.cancel()
        try:
            await asyncio.wait(running, timeout=_AGAIN_AFTER)
        except asyncio.CancelledError:
            cancelled = True
        running = [task for task in running if not task.done()]
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: an error of a cancelled task is not news
    if cancelled:
        raise asyncio.CancelledError
