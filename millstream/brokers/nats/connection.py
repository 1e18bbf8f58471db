"""The NATS side of the NATS broker: its URL, its connection and its errors.

:func:`parse_url` reads what ``nats://`` says (:class:`NatsOptions`).

This is the one place where nats-py's exceptions and the server's refusals
become millstream's: ``BrokerUnavailable`` (reconnect), ``AuthenticationError``
(stop: credentials or a permission refused), ``ConfigError`` (a name or a
setting the server will never accept), ``BrokerError`` (anything else).

nats-py reconnects on its own by default. Here it does not: a lost
connection closes the client, every waiter wakes with ``BrokerUnavailable``
and the supervisor reconnects (state RECONNECTING, backoff), the same as for
every other broker. A connection that goes silent (a network partition: no
reset, nothing closes) is found dead within seconds, not minutes: nats-py
pings every ``PING_INTERVAL`` and gives up after ``MAX_OUTSTANDING_PINGS``
unanswered, and whatever waits for an answer that does not come in time
(a pull request, an acknowledgement, an API call) pings at once
(:meth:`Connection.probe`) and marks the connection lost when no pong comes.

A refused password is never retried. A permission violation does not close
a NATS connection (the server only drops the message and says so);
:class:`Connection` remembers it, so the operation that needed the
permission fails at once with the subject and the fix instead of timing out.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.js import errors as js_errors

from millstream.brokers.nats.names import DEAD_PREFIX, PRIVATE_PREFIX
from millstream.brokers.nats.wire import parse_headers
from millstream.errors import AuthenticationError, BrokerError, BrokerUnavailable, ConfigError
from millstream.urls import query_count, query_seconds, redact

__all__ = [
    "DEFAULT_LEASE",
    "REQUEST_TIMEOUT",
    "Connection",
    "NatsOptions",
    "api_error",
    "parse_url",
    "translated",
]

T = TypeVar("T")

DEFAULT_LEASE = 30.0
DEFAULT_MAX_ACK_PENDING = 20_000
EXPECTED = "nats://[user:password@]host:4222, optionally with ?lease=30&max_ack_pending=20000"

REQUEST_TIMEOUT = 5  # one JetStream API call or acknowledgement reply, at most
CONNECT_TIMEOUT = 3
# A silent dead connection is noticed within (MAX_OUTSTANDING_PINGS + 1) * PING_INTERVAL
# seconds however idle it is, sooner by a probe when an answer is overdue.
PING_INTERVAL = 2
MAX_OUTSTANDING_PINGS = 3
PROBE_TIMEOUT = 2  # seconds a probe waits for its pong

_VIOLATION = re.compile(r'Permissions Violation for (\w+) (?:to|from) "?([^"\']+)"?', re.I)


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
        example = f"nats://127.0.0.1:4222?{name}="
        if name == "lease":
            lease = query_seconds(url, name, raw, example=f"{example}{DEFAULT_LEASE:g}")
        elif name == "max_ack_pending":
            max_ack_pending = query_count(
                url, name, raw, example=f"{example}{DEFAULT_MAX_ACK_PENDING}"
            )
        else:
            raise ConfigError(
                f"broker URL {shown!r}: unknown parameter {name!r}; expected {EXPECTED}"
            )
    server = urlunsplit(parts._replace(query="", fragment=""))
    return NatsOptions(server, lease=lease, max_ack_pending=max_ack_pending)


class _Client(Client):
    """nats-py's client, reading header values that are not UTF-8 with backslash escapes.

    nats-py reads them with U+FFFD in place of each bad byte, so two ids that
    differ only there would be one id to an idempotent handler.
    """

    _parse_header_lines = staticmethod(parse_headers)


class Connection:
    """One nats-py client and what it has been told: lost, refused, or a permission denied.

    Waiters (a fetch, a publish waiting for its acknowledgements, a settle
    waiting for its reply) wait on :meth:`changed` too, so a lost connection
    or a refusal wakes them at once.
    """

    def __init__(self, url: str, options: NatsOptions) -> None:
        self.url = url
        self.options = options
        self.client: Client = _Client()
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
                max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                flush_timeout=REQUEST_TIMEOUT,
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
                if isinstance(task.exception(), (TimeoutError, nats_errors.TimeoutError)):
                    await self.probe()  # no answer: is anyone still there?
                with translated(self.url):
                    return task.result()
            try:
                self.check(*mine)
            except BrokerError:
                task.cancel()
                raise

    async def stored(
        self, stream: str, *, sequence: int = 0, last_of: str = ""
    ) -> tuple[bytes, dict[str, str]] | None:
        """The payload and headers stored at ``sequence`` (or last on ``last_of``) in ``stream``.

        ``None`` when there is none (or no such stream); other refusals raise
        JetStream's ``APIError`` (see :func:`api_error`). The headers are read
        here, not by nats-py, whose reader for stored messages turns values
        that are not ASCII into ``email`` header objects.
        """
        request = {"last_by_subj": last_of} if last_of else {"seq": sequence}
        reply = await self.guard(
            self.client.request(
                f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps(request).encode(), REQUEST_TIMEOUT
            ),
            stream,
            "_INBOX",
        )
        answer = json.loads(reply.data)
        if "error" in answer:
            try:
                js_errors.APIError.from_error(answer["error"])
            except js_errors.NotFoundError:
                return None
        found = answer["message"]
        # After the first line (NATS/1.0), the header lines.
        headers = parse_headers(base64.b64decode(found.get("hdrs") or b"").partition(b"\r\n")[2])
        return base64.b64decode(found.get("data") or b""), headers

    async def probe(self) -> None:
        """Ping the server after an answer did not come; no pong in time marks the connection lost.

        A silent partition drops everything without closing anything, so
        waiting longer cannot help: the sooner the connection is known lost,
        the sooner every waiter fails and the supervisor reconnects.
        """
        if self.lost is not None:
            return
        try:
            await self.client.flush(PROBE_TIMEOUT)
        except (TimeoutError, nats_errors.Error, OSError) as exc:
            self._mark(
                BrokerUnavailable(
                    f"broker {redact(self.url)}: connection dead: no answer to a ping within "
                    f"{PROBE_TIMEOUT}s ({type(exc).__name__}); reconnecting"
                )
            )

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
