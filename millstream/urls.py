"""URL helpers every adapter shares: redaction, query numbers, and unknown hosts.

``redact`` hides passwords in anything logged or shown. ``query_seconds``
and ``query_count`` read a URL's query parameters with one wording for every
refusal (the URL, the parameter, what it must be, an example).

A refused or timed-out connection may heal (the broker restarts): the
supervisor reconnects. A host name DNS says does not exist will not: the
URL is wrong, and the start (or the consumer) should fail saying so, not
retry. Every adapter's ``connect`` calls :func:`refuse_unknown_hosts` when
it could not reach its broker.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Iterable

from millstream.errors import ConfigError

__all__ = [
    "query_count",
    "query_seconds",
    "redact",
    "refuse_unknown_hosts",
    "unknown_hosts",
    "url_addresses",
    "url_hosts",
]


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


def url_addresses(url: str) -> list[str]:
    """The ``host[:port]`` entries of ``url``, without its credentials; it may list several
    (``kafka://user:pass@a:9092,b:9092`` has ``a:9092`` and ``b:9092``)."""
    netloc = url.partition("://")[2].partition("/")[0].partition("?")[0]
    return [entry.strip() for entry in netloc.rpartition("@")[2].split(",") if entry.strip()]


def url_hosts(url: str) -> list[str]:
    """The host names of ``url``, which may list several (``kafka://a:9092,b:9092``)."""
    names = []
    for entry in url_addresses(url):
        if entry.startswith("["):  # [::1]:9092
            names.append(entry[1:].partition("]")[0])
        else:
            names.append(entry.rpartition(":")[0] if ":" in entry else entry)
    return names


async def refuse_unknown_hosts(url: str, cause: BaseException) -> None:
    """Raise ``ConfigError`` from ``cause`` if no host of ``url`` exists at all."""
    hosts = url_hosts(url)
    missing = await unknown_hosts(hosts)
    if hosts and len(missing) == len(hosts):
        raise ConfigError(
            f"broker URL {redact(url)!r}: no host named {', '.join(missing)} exists "
            "(DNS: name not known); fix the host in the URL (MILLSTREAM_BROKER_URL)"
        ) from cause


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and health pages.

    Works on URLs listing several hosts (``kafka://u:p@a:9092,b:9092``),
    which ``urlsplit`` cannot read a port from.
    """
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if "?" in netloc:
        netloc, _, query = netloc.partition("?")
        tail, slash = f"?{query}{slash}{tail}", ""
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = f"{userinfo.partition(':')[0]}:***"
    return f"{scheme}{sep}{userinfo}{at}{hosts}{slash}{tail}"


def query_seconds(
    url: str, name: str, raw: str, *, example: str, allow_zero: bool = False, least: float = 0.0
) -> float:
    """``raw``, the value of query parameter ``name`` of ``url``, as seconds.

    Raises ``ConfigError`` naming the (redacted) URL, the parameter, what it
    must be and ``example`` (a whole URL that works) unless ``raw`` is a
    finite number above 0 (or 0 itself when ``allow_zero``: "off"), and at
    least ``least`` when that is set.
    """
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if least > 0:
        if not math.isfinite(value) or value < least:
            raise ConfigError(
                f"broker URL {redact(url)!r}: {name}={raw!r} must be at least {least:g} "
                f"seconds; expected e.g. {example}"
            )
        return value
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        floor = "0 (off) or more" if allow_zero else "more than 0"
        raise ConfigError(
            f"broker URL {redact(url)!r}: {name}={raw!r} must be a number of seconds, "
            f"{floor}; expected e.g. {example}"
        )
    return value


def query_count(url: str, name: str, raw: str, *, example: str, least: int = 1) -> int:
    """``raw``, the value of query parameter ``name`` of ``url``, as a whole number >= ``least``."""
    if not raw.isdigit() or int(raw) < least:
        raise ConfigError(
            f"broker URL {redact(url)!r}: {name}={raw!r} must be a whole number, "
            f"{least} or more; expected e.g. {example}"
        )
    return int(raw)
