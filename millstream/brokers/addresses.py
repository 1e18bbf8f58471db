"""Telling a wrong address from a broker that is down, for adapters' connect errors.

A refused or timed-out connection may heal (the broker restarts): the
supervisor reconnects. A host name DNS says does not exist will not: the
URL is wrong, and the consumer should fail with that said, not retry.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

__all__ = ["unknown_hosts"]


async def unknown_hosts(hosts: Iterable[str]) -> list[str]:
    """The names among ``hosts`` that DNS answers do not exist (a timeout is not an answer)."""
    loop = asyncio.get_running_loop()
    missing = []
    for host in hosts:
        try:
            await loop.getaddrinfo(host, None)
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_NONAME:
                missing.append(host)
    return missing
