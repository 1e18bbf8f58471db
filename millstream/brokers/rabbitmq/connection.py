"""The AMQP side of the RabbitMQ broker: its URL, its connection, its errors.

:class:`RabbitMqConnection` is what the broker, its subscriptions and its
dead-letter queues talk through: the AMQP connection, channels on it, the
confirmed publisher, and what lives as long as the broker (the names it
declared, what lost subscriptions held). This is the one place where
aiormq's exceptions become millstream's (:func:`translated`), so the broker,
subscription and dead-letter code read one vocabulary:
``BrokerUnavailable`` (reconnect), ``AuthenticationError`` (stop),
``BrokerError`` (anything else).

The adapter speaks through aiormq, the AMQP transport under aio-pika (the
``rabbitmq`` extra installs both): aio-pika wraps every delivery in an
``IncomingMessage`` and every publish in an ``Exchange`` call, which costs
more than everything else the hot path does, and its robust connection
would reconnect behind the supervisor's back with delivery tags that no
longer mean anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TypeAlias, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiormq
from aiormq import exceptions as amqp_errors
from aiormq.abc import AbstractChannel, AbstractConnection
from aiormq.channel import Channel
from pamqp.commands import Basic

from millstream.brokers.rabbitmq.frames import install as install_careful_reading
from millstream.brokers.rabbitmq.returns import Returns
from millstream.brokers.rabbitmq.wire import Names
from millstream.errors import (
    AuthenticationError,
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    text_of,
)
from millstream.urls import redact, refuse_unknown_hosts

__all__ = [
    "EXPECTED",
    "PUBLISH_WINDOW",
    "NotFound",
    "Publication",
    "RabbitMqConnection",
    "RabbitMqOptions",
    "open_connection",
    "parse_url",
    "translated",
]

Publication: TypeAlias = tuple[str, str, bytes, Basic.Properties]
"""(exchange, routing key, body, properties) of one message to publish."""

EXPECTED = (
    "amqp://user:password@host:5672/vhost or amqps://... for TLS, "
    "optionally with ?queue_type=quorum|classic&heartbeat=4"
)
CONNECT_TIMEOUT = 5.0
HEARTBEAT = 4  # AMQP heartbeat (s) unless the URL says ?heartbeat=; see _Connection
_QUEUE_TYPES = ("quorum", "classic")
# Publishes awaiting their confirms at once: enough to keep the connection
# busy, few enough that a batch of a million does not hold a million futures.
PUBLISH_WINDOW = 2000


class NotFound(BrokerUnavailable):
    """A queue or exchange is not there (deleted, or never declared): declaring it again helps."""


@dataclass(frozen=True, slots=True)
class RabbitMqOptions:
    """What an ``amqp://`` URL says: where to connect, and millstream's own parameters."""

    client_url: str
    queue_type: str = "quorum"


def parse_url(url: str) -> RabbitMqOptions:
    """Split ``url`` into aiormq's URL and millstream's ``queue_type``.

    Raises ``ConfigError`` naming the URL (password hidden), what is wrong and
    the expected form.
    """
    parts = urlsplit(url)
    shown = redact(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigError(f"broker URL {shown!r} is not an AMQP URL; expected {EXPECTED}")
    if not parts.hostname:
        raise ConfigError(f"broker URL {shown!r} has no host; expected {EXPECTED}")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ConfigError(
            f"broker URL {shown!r} has an invalid port; expected {EXPECTED}"
        ) from None
    queue_type = "quorum"
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "queue_type":
            rest.append((name, value))
        elif value in _QUEUE_TYPES:
            queue_type = value
        else:
            raise ConfigError(
                f"broker URL {shown!r}: queue_type={value!r} is not one of "
                f"{', '.join(_QUEUE_TYPES)}; expected e.g. amqp://host:5672/?queue_type=quorum"
            )
    if not any(name == "heartbeat" for name, _ in rest):
        rest.append(("heartbeat", str(HEARTBEAT)))
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    return RabbitMqOptions(client_url, queue_type=queue_type)


async def open_connection(url: str, options: RabbitMqOptions) -> aiormq.abc.AbstractConnection:
    """An open AMQP connection, with errors translated; no automatic reconnection.

    A lost connection must reach the supervisor (state RECONNECTING), and
    refused credentials must not be tried again, so aiormq's plain
    connection is used, never a robust one.
    """
    install_careful_reading()
    with translated(url):
        async with asyncio.timeout(CONNECT_TIMEOUT):
            connection = _Connection(options.client_url)
            await connection.connect()
            return connection


class _Connection(aiormq.Connection):
    """aiormq's connection, giving up on a silent peer sooner.

    A partition that drops packets without resetting anything shows only as
    silence. RabbitMQ sends a heartbeat every ``heartbeat / 2`` seconds even
    when idle; aiormq declares the connection dead after ``heartbeat + 1``
    seconds times this multiplier without a frame (its own is 3: 15 s at
    ``heartbeat=4``, 183 s at RabbitMQ's 60). At 1, that is 5 s (two
    heartbeats missed), checked every ``heartbeat / 2`` seconds: a silent
    partition ends every subscription on the connection with
    ``BrokerUnavailable`` within about 7 s, and RabbitMQ, missing two of
    ours, returns what they held after about 8 s.
    """

    HEARTBEAT_GRACE_MULTIPLIER = 1


class RabbitMqConnection:
    """The broker's AMQP connection and its publisher channel, opened again after a loss.

    The broker owns one for its lifetime and hands it to its subscriptions
    and dead-letter queues, which open channels of their own on it and
    publish copies through :meth:`send`.
    """

    def __init__(self, url: str, options: RabbitMqOptions) -> None:
        self.url = url
        self.options = options
        self._connection: AbstractConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self.topics: set[str] = set()
        """Topics whose exchanges were declared on the current connection."""
        # Per queue: what subscriptions held when their connection died.
        self._returns: dict[str, Returns] = {}
        self.declared: set[tuple[str, str]] = set()
        """("exchange" | "queue", name) of everything declared through it: for cleanup tools."""

    async def open(self) -> None:
        """Open the connection unless it is open; safe to repeat, and how reconnecting happens."""
        async with self._lock:
            if self._connection is not None and not self._connection.is_closed:
                return
            old, self._connection, self._publisher = self._connection, None, None
            if old is not None:
                with suppress(Exception):
                    await old.close()
            self.topics.clear()
            try:
                self._connection = await open_connection(self.url, self.options)
            except BrokerUnavailable as exc:
                await refuse_unknown_hosts(self.url, exc)
                raise

    async def close(self) -> None:
        """Close the connection (and every channel on it)."""
        connection, self._connection, self._publisher = self._connection, None, None
        if connection is not None:
            with suppress(Exception):
                await connection.close()

    async def channel(self, *, confirms: bool = True) -> AbstractChannel:
        """A new channel on the connection, connecting first if needed."""
        connection = self._connection
        if connection is None or connection.is_closed:
            await self.open()
            connection = self._connection
            if connection is None:
                raise BrokerUnavailable(f"broker {redact(self.url)}: not connected")
        with translated(self.url):
            return await connection.channel(publisher_confirms=confirms)

    async def publisher(self) -> AbstractChannel:
        """The channel publishing goes through (with confirms), opened again if closed."""
        channel = self._publisher
        if channel is None or channel.is_closed:
            channel = self._publisher = await self.channel()
        return channel

    async def send(self, items: Sequence[Publication], *, mandatory: bool = False) -> None:
        """Publish ``items`` with confirms, ``PUBLISH_WINDOW`` at a time; raise if any failed.

        ``mandatory`` makes a message no queue takes an error instead of
        silently dropped: for copies sent straight to one queue.
        """
        channel = await self.publisher()
        # aiormq's own channel: its publish takes wait=False (do not wait for
        # each frame to be written; the confirm says more anyway).
        publish = cast(Channel, channel).basic_publish
        with translated(self.url):
            for start in range(0, len(items), PUBLISH_WINDOW):
                window = items[start : start + PUBLISH_WINDOW]
                await asyncio.gather(
                    *[
                        publish(
                            body,
                            exchange=exchange,
                            routing_key=key,
                            properties=props,
                            mandatory=mandatory,
                            wait=False,
                        )
                        for exchange, key, body, props in window
                    ]
                )

    def returns(self, queue: str, most: int) -> Returns:
        """What lost subscriptions of ``queue`` held, remembering at least ``most`` messages."""
        found = self._returns.get(queue)
        if found is None:
            found = self._returns[queue] = Returns(most)
        found.most = max(found.most, most)
        return found

    def note_topic(self, names: Names) -> None:
        """Record a topic declared on this connection, and its names (see ``declared``)."""
        self.topics.add(names.topic)
        self.declared.update(
            {("exchange", names.exchange), ("exchange", names.unrouted), ("queue", names.unrouted)}
        )

    def note_retry_queue(self, name: str) -> None:
        """Record a retry queue a subscription declared (see ``declared``)."""
        self.declared.add(("queue", name))


@contextmanager
def translated(url: str) -> Iterator[None]:
    """Turn aiormq's and the socket's exceptions into millstream's, naming the broker."""
    try:
        yield
    except BrokerError:
        raise
    except amqp_errors.ProbableAuthenticationError as exc:
        raise _refused(url, exc) from exc
    except amqp_errors.ChannelAccessRefused as exc:
        raise AuthenticationError(
            f"broker URL {redact(url)!r} refused an operation ({text_of(exc)}); give the user "
            "configure, write and read permissions on the topic's names, e.g. "
            "rabbitmqctl set_permissions -p <vhost> <user> '.*' '.*' '.*'"
        ) from exc
    except amqp_errors.InvalidFrameError as exc:
        raise _invalid_frame(url, exc) from exc
    except amqp_errors.ChannelNotFoundEntity as exc:
        raise NotFound(f"broker {redact(url)}: {text_of(exc)}") from exc
    except amqp_errors.ChannelPreconditionFailed as exc:
        raise BrokerError(
            f"broker {redact(url)} refused a declaration ({text_of(exc)}); a queue or exchange "
            "of that name exists with other settings (e.g. another queue_type): delete it or "
            "use the settings it was made with"
        ) from exc
    except (
        amqp_errors.AMQPError,
        amqp_errors.ChannelInvalidStateError,
        ConnectionError,
        OSError,
        TimeoutError,
        EOFError,
    ) as exc:
        raise BrokerUnavailable(f"broker {redact(url)} is unreachable: {text_of(exc)}") from exc
    except RuntimeError as exc:
        if "closed" in str(exc):  # aiormq: "<Connection ...> closed" when opening a channel
            raise BrokerUnavailable(f"broker {redact(url)}: connection closed") from exc
        raise
    except Exception as exc:
        if type(exc) is not Exception:
            raise
        # aiormq ends what still waits on a channel or connection it closed
        # with a bare Exception.
        raise BrokerUnavailable(f"broker {redact(url)}: the channel was closed") from exc
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        # aiormq closes a connection it found silent with a CancelledError,
        # which every request still waiting on it then raises: this task was
        # not cancelled, the connection died.
        raise BrokerUnavailable(
            f"broker {redact(url)}: the connection was closed while a request waited "
            "for its answer (nothing came back for too long: a silent network?)"
        ) from exc


def _invalid_frame(url: str, exc: Exception) -> BrokerError:
    if "Connection.OpenOk" in text_of(exc):
        # The server closed the connection at Connection.Open: the vhost.
        return AuthenticationError(
            f"broker URL {redact(url)!r}: the server refused the virtual host (it does "
            "not exist or the user has no access to it); create it or grant access, e.g. "
            "rabbitmqctl add_vhost <vhost>; rabbitmqctl set_permissions -p <vhost> <user> "
            "'.*' '.*' '.*'"
        )
    return BrokerUnavailable(f"broker {redact(url)} failed: {text_of(exc)}")


def _refused(url: str, exc: Exception) -> AuthenticationError:
    shown = redact(url)
    if urlsplit(url).password is None:
        fix = "put the user and password in the URL (amqp://user:password@host:5672/vhost)"
    else:
        fix = "check the user and password in the URL (amqp://user:password@host:5672/vhost)"
    return AuthenticationError(
        f"broker URL {shown!r} refused the credentials ({text_of(exc)}); {fix}"
    )
