"""The NATS side of the NATS broker: its URL, its names, its connection, its errors.

This is the one place where nats-py's exceptions and the server's refusals
become millstream's: ``BrokerUnavailable`` (reconnect), ``AuthenticationError``
(stop: credentials or a permission refused), ``ConfigError`` (a name or a
setting the server will never accept), ``BrokerError`` (anything else).

nats-py reconnects on its own by default. Here it does not: a lost
connection closes the client, every waiter wakes with ``BrokerUnavailable``
and the supervisor reconnects (state RECONNECTING, backoff), the same as for
every other broker. A refused password is never retried. A permission
violation does not close a NATS connection (the server only drops the
message and says so); :class:`Connection` remembers it, so the operation
that needed the permission fails at once with the subject and the fix
instead of timing out.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.js import errors as js_errors

from millstream.brokers import redact
from millstream.errors import AuthenticationError, BrokerError, BrokerUnavailable, ConfigError

__all__ = [
    "DEFAULT_LEASE",
    "Connection",
    "Names",
    "NatsOptions",
    "parse_url",
    "translated",
]

T = TypeVar("T")

DEFAULT_LEASE = 30.0
DEFAULT_MAX_ACK_PENDING = 20_000
EXPECTED = "nats://[user:password@]host:4222, optionally with ?lease=30&max_ack_pending=20000"
REQUEST_TIMEOUT = 5  # one JetStream API call or acknowledgement reply, at most
CONNECT_TIMEOUT = 3
PING_INTERVAL = 5  # a silent dead connection is noticed after about 3 of these

PRIVATE_PREFIX = "_ms"  # subjects of group-private messages: _ms.<stream>.<consumer>
DEAD_PREFIX = "_msdlq"  # subjects of dead letters: _msdlq.<dead-letter stream>

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_VIOLATION = re.compile(r'Permissions Violation for (\w+) (?:to|from) "?([^"\']+)"?', re.I)
_NAME_MAX = 64


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """What a ``nats://`` URL says: where to connect, and millstream's own parameters."""

    server: str
    """The URL nats-py connects to (credentials included, millstream's parameters removed)."""
    lease: float = DEFAULT_LEASE
    """The consumer's ``ack_wait``: how long a member that stopped calling keeps a message."""
    max_ack_pending: int = DEFAULT_MAX_ACK_PENDING
    """The group's cap on unacknowledged messages, every member and waiting retry included."""


def parse_url(url: str) -> NatsOptions:
    """Split ``url`` into nats-py's URL and millstream's ``lease`` and ``max_ack_pending``.

    Raises ``ConfigError`` naming the URL, what is wrong and the expected form.
    """
    parts = urlsplit(url)
    shown = redact(url)
    if parts.scheme != "nats":
        raise ConfigError(f"broker URL {shown!r} is not a NATS URL; expected {EXPECTED}")
    if not parts.hostname:
        raise ConfigError(f"broker URL {shown!r} has no host; expected {EXPECTED}")
    lease, max_ack_pending = DEFAULT_LEASE, DEFAULT_MAX_ACK_PENDING
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        if name == "lease":
            try:
                lease = float(raw)
            except ValueError:
                lease = math.nan
            if not math.isfinite(lease) or lease <= 0:
                raise ConfigError(
                    f"broker URL {shown!r}: lease={raw!r} must be a number of seconds, "
                    "more than 0; expected e.g. nats://127.0.0.1:4222?lease=30"
                )
        elif name == "max_ack_pending":
            if not raw.isdigit() or int(raw) < 1:
                raise ConfigError(
                    f"broker URL {shown!r}: max_ack_pending={raw!r} must be a whole number "
                    "of messages, 1 or more; expected e.g. nats://127.0.0.1:4222?max_ack_pending=20000"
                )
            max_ack_pending = int(raw)
        else:
            raise ConfigError(
                f"broker URL {shown!r}: unknown parameter {name!r}; expected {EXPECTED}"
            )
    server = urlunsplit(parts._replace(query="", fragment=""))
    return NatsOptions(server, lease=lease, max_ack_pending=max_ack_pending)


def _token(text: str) -> str:
    """``text`` as a JetStream name: what is not a letter, digit, ``_`` or ``-`` becomes ``_``.

    Whenever that changed something (or the name is long) a hash of the
    original is appended, so ``a.b`` and ``a_b`` never share a stream.
    """
    safe = _UNSAFE.sub("_", text)
    if safe != text or len(safe) > _NAME_MAX:
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        safe = f"{safe[:_NAME_MAX]}_{digest}"
    return safe


@dataclass(frozen=True, slots=True)
class Names:
    """Every JetStream name and subject of one topic and group (see docs/brokers/nats.md)."""

    topic: str
    group: str

    @property
    def stream(self) -> str:
        """The topic's stream, created by the first publisher or subscriber."""
        return f"MS_{_token(self.topic)}"

    @property
    def private_subjects(self) -> str:
        """The wildcard the topic's stream also holds: messages meant for one group only."""
        return f"{PRIVATE_PREFIX}.{self.stream}.*"

    @property
    def consumer(self) -> str:
        """The group's durable pull consumer on the topic's stream."""
        return _token(self.group)

    @property
    def private(self) -> str:
        """Where released and replayed messages go: only this group takes them."""
        return f"{PRIVATE_PREFIX}.{self.stream}.{self.consumer}"

    @property
    def dead_stream(self) -> str:
        """The group's dead-letter stream (one per topic and group)."""
        digest = hashlib.sha256(f"{self.topic}\0{self.group}".encode()).hexdigest()[:10]
        return f"MSDLQ_{_token(self.topic)[:40]}_{self.consumer[:40]}_{digest}"

    @property
    def dead(self) -> str:
        """The subject of the group's dead-letter stream."""
        return f"{DEAD_PREFIX}.{self.dead_stream}"

    @property
    def pull(self) -> str:
        """Where a member asks the group's consumer for messages."""
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}"


def check_topic(topic: str) -> None:
    """Raise ``ConfigError`` unless ``topic`` can be a NATS subject of its own stream."""
    tokens = topic.split(".")
    problem = None
    if not topic or any(not token for token in tokens):
        problem = "has an empty token (leading, trailing or double dot)"
    elif any(c.isspace() for c in topic):
        problem = "contains white space"
    elif any(token in ("*", ">") for token in tokens):
        problem = "has a wildcard ('*' or '>')"
    elif topic.startswith(("$", f"{PRIVATE_PREFIX}.", f"{DEAD_PREFIX}.")):
        problem = f"starts with '$', '{PRIVATE_PREFIX}.' or '{DEAD_PREFIX}.', which are reserved"
    if problem:
        raise ConfigError(
            f"topic {topic!r} {problem}; a NATS topic is a subject such as 'orders' or 'orders.eu'"
        )


class Connection:
    """One nats-py client and what it has been told: lost, refused, or a permission denied.

    Waiters (a fetch, a publish waiting for its acknowledgements, a settle
    waiting for its reply) wait on :meth:`changed` too, so a lost connection
    or a refusal wakes them at once.
    """

    def __init__(self, url: str, options: NatsOptions) -> None:
        self.url = url
        self.options = options
        self.client = Client()
        self.lost: BrokerError | None = None
        self.violations: list[tuple[str, str]] = []  # (operation, subject) refused
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._opening = False
        self._listeners: list[Callable[[], None]] = []

    async def open(self) -> None:
        """Connect and say hello; raises ``AuthenticationError`` or ``BrokerUnavailable``.

        One attempt only: nats-py would try a refused server again and again
        (its ``max_reconnect_attempts`` counts from the second try), so the
        first error it reports while connecting ends the attempt here.
        """
        self._opening = True
        try:
            await self._connect()
        finally:
            self._opening = False
        if self.lost is not None:
            raise self.lost

    async def _connect(self) -> None:
        with translated(self.url):
            await self.client.connect(
                servers=[self.options.server],
                allow_reconnect=False,
                connect_timeout=CONNECT_TIMEOUT,
                max_reconnect_attempts=0,
                ping_interval=PING_INTERVAL,
                max_outstanding_pings=3,
                error_cb=self._on_error,
                closed_cb=self._on_closed,
                disconnected_cb=self._on_closed,
                pending_size=8 * 1024 * 1024,
                name="millstream",
            )

    @property
    def alive(self) -> bool:
        return self.lost is None and self.client.is_connected

    def changed(self) -> asyncio.Future[None]:
        """A future that completes the next time the connection is lost or refuses something."""
        return self._changed

    def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever the connection is lost or refuses something."""
        self._listeners.append(wake)

    def unlisten(self, wake: Callable[[], None]) -> None:
        if wake in self._listeners:
            self._listeners.remove(wake)

    def check(self, *mine: str) -> None:
        """Raise what this connection was told, if it concerns subjects containing ``mine``.

        ``AuthenticationError`` for a permission refused on one of them (or
        for the credentials), ``BrokerUnavailable`` when the connection is lost.
        """
        for operation, said in self.violations:
            part = next((p for p in mine if p and p.lower() in said), None)
            if part is not None:
                # nats-py lowercases the server's error; JetStream API subjects
                # are upper case but for the names in them, which are ours.
                subject = said.upper().replace(part.upper(), part)
                raise AuthenticationError(
                    f"broker {redact(self.url)} refused a permission: {operation} to "
                    f"{subject!r}; grant this user {operation.lower()} on it (millstream needs "
                    "publish and subscribe on the topic, '$JS.API.>', '$JS.ACK.>', "
                    f"'_INBOX.>', '{PRIVATE_PREFIX}.>' and '{DEAD_PREFIX}.>'; "
                    "see docs/brokers/nats.md)"
                )
        if self.lost is not None:
            raise self.lost
        if not self.client.is_connected:
            raise BrokerUnavailable(f"broker {redact(self.url)}: not connected")

    async def guard(self, operation: Awaitable[T], *mine: str) -> T:
        """Await ``operation``, but fail at once if the connection is lost or refuses ``mine``."""
        try:
            self.check(*mine)
        except BrokerError:
            if asyncio.iscoroutine(operation):
                operation.close()  # never started: no "never awaited" warning
            raise
        task = asyncio.ensure_future(operation)
        while True:
            changed = self._changed
            await asyncio.wait((task, changed), return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                with translated(self.url):
                    return task.result()
            try:
                self.check(*mine)
            except BrokerError:
                task.cancel()
                raise

    async def close(self) -> None:
        if not self.client.is_closed:
            with suppress(Exception):  # closing a broken connection may fail any way
                await asyncio.wait_for(self.client.close(), timeout=2.0)
        self._mark(BrokerUnavailable(f"broker {redact(self.url)}: connection closed"))

    async def _on_error(self, error: Exception) -> None:
        if self._opening:
            with translated(self.url):
                raise error
        found = _VIOLATION.search(str(error))
        if found:
            self.violations.append((found.group(1).lower(), found.group(2).lower()))
            self._wake()
        elif isinstance(error, nats_errors.AuthorizationError):
            self._mark(_refused(self.url))

    async def _on_closed(self) -> None:
        if isinstance(self.client.last_error, nats_errors.AuthorizationError):
            self._mark(_refused(self.url))
        else:
            self._mark(BrokerUnavailable(f"broker {redact(self.url)}: connection lost"))

    def _mark(self, error: BrokerError) -> None:
        if self.lost is None or isinstance(error, AuthenticationError):
            self.lost = error
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        if not changed.done():
            changed.set_result(None)
        for wake in list(self._listeners):
            wake()


def _refused(url: str) -> AuthenticationError:
    return AuthenticationError(
        f"broker {redact(url)} refused the credentials (Authorization Violation); "
        "check the user and password (or token) in the URL, e.g. nats://user:password@host:4222"
    )


def api_error(url: str, error: js_errors.APIError, what: str) -> BrokerError:
    """A JetStream API error as millstream's: permissions and missing JetStream are final.

    JetStream API errors pass :func:`translated` untouched, so callers can
    tell "not found" from the rest; this is how they end up translated.
    """
    code = error.err_code
    shown = redact(url)
    if isinstance(error, js_errors.ServiceUnavailableError):
        return BrokerUnavailable(f"broker {shown}: {what}: JetStream unavailable ({error})")
    if code == 10039:  # JetStream not enabled for the account
        return AuthenticationError(
            f"broker {shown}: {what}: this user's account has no JetStream; enable it for "
            "the account (jetstream: enabled in the server config)"
        )
    if code in (10047, 10027, 10028, 10026, 10002):  # storage or account limits
        return BrokerError(f"broker {shown}: {what}: {error.description} (limits; raise them)")
    return BrokerError(f"broker {shown}: {what}: {error.description} (code {code})")


@contextmanager
def translated(url: str) -> Iterator[None]:
    """Turn nats-py's exceptions raised inside into millstream's."""
    shown = redact(url)
    try:
        yield
    except (BrokerError, js_errors.APIError):
        raise
    except nats_errors.AuthorizationError:
        raise _refused(url) from None
    except nats_errors.NoServersError as exc:
        raise BrokerUnavailable(f"broker {shown} is not reachable ({exc})") from None
    except nats_errors.NoRespondersError:
        raise BrokerUnavailable(
            f"broker {shown}: JetStream does not answer; is the server started with -js?"
        ) from None
    except (TimeoutError, nats_errors.TimeoutError) as exc:
        raise BrokerUnavailable(f"broker {shown}: no answer in time ({exc!r})") from None
    except (
        nats_errors.ConnectionClosedError,
        nats_errors.StaleConnectionError,
        nats_errors.UnexpectedEOF,
        nats_errors.OutboundBufferLimitError,
        OSError,
        EOFError,
    ) as exc:
        raise BrokerUnavailable(f"broker {shown}: connection lost ({exc!r})") from None
    except nats_errors.Error as exc:
        text = str(exc)
        if "authorization" in text.lower() or "authentication" in text.lower():
            raise _refused(url) from None
        raise BrokerUnavailable(f"broker {shown}: {text}") from None
