"""Telling a wrong address from a broker that is down, for adapters' connect errors.

A refused or timed-out connection may heal (the broker restarts): the
supervisor reconnects. A host name DNS says does not exist will not: the
URL is wrong, and the start (or the consumer) should fail saying so, not
retry. Every adapter's ``connect`` calls :func:`refuse_unknown_hosts` when
it could not reach its broker.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

from millstream.errors import ConfigError

__all__ = ["refuse_unknown_hosts", "unknown_hosts", "url_hosts"]


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


def url_hosts(url: str) -> list[str]:
    """The host names of ``url``, which may list several (``kafka://a:9092,b:9092``)."""
    netloc = url.partition("://")[2].partition("/")[0].partition("?")[0]
    hosts = netloc.rpartition("@")[2]
    names = []
    for entry in hosts.split(","):
        entry = entry.strip()
        if entry.startswith("["):  # [::1]:9092
            names.append(entry[1:].partition("]")[0])
        elif entry:
            names.append(entry.rpartition(":")[0] if ":" in entry else entry)
    return names


async def refuse_unknown_hosts(url: str, cause: BaseException) -> None:
    """Raise ``ConfigError`` from ``cause`` if no host of ``url`` exists at all."""
    from millstream.brokers import redact

    hosts = url_hosts(url)
    missing = await unknown_hosts(hosts)
    if hosts and len(missing) == len(hosts):
        raise ConfigError(
            f"broker URL {redact(url)!r}: no host named {', '.join(missing)} exists "
            "(DNS: name not known); fix the host in the URL (MILLSTREAM_BROKER_URL)"
        ) from cause
