"""The Kafka side of the Kafka broker: its URL, its clients, and its errors.

:class:`KafkaConnection` holds the producer and admin client a broker
shares with its subscriptions and dead-letter queues: it creates topics on
first use and sends records in batches per partition. This is the one place
where aiokafka's exceptions become millstream's (:func:`translated`):
``BrokerUnavailable`` (reconnect), ``AuthenticationError`` (stop: refused
credentials, missing ACLs, or an address that answers but is not Kafka),
``BrokerError`` (anything else).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.structs import BrokerMetadata

from millstream.errors import AuthenticationError, BrokerError, BrokerUnavailable, ConfigError
from millstream.urls import query_count, query_seconds, redact, refuse_unknown_hosts

__all__ = ["KafkaConnection", "KafkaOptions", "Route", "parse_url", "translated"]

Route = Callable[[str, int], tuple[str, int]]

EXPECTED = (
    "kafka://host:9092[,host:9092] (kafka://user:password@host:9092 for SASL/SCRAM), "
    "optionally with ?partitions=8&session_timeout=10&rebalance_timeout=30"
)

# URL parameters in seconds -> (default, smallest allowed); 0 allowed means "off".
_SECONDS: dict[str, tuple[float, float]] = {
    "session_timeout": (10.0, 0.1),  # a member silent this long is out of the group
    "heartbeat": (1.0, 0.05),
    "rebalance_timeout": (30.0, 0.05),  # how long a rebalance waits for members to rejoin
    "max_poll_interval": (300.0, 0.5),  # a member that does not poll this long leaves
    "drain": (10.0, 0.0),  # how long a revoked partition waits for its handlers
    "linger": (0.005, 0.0),  # producer batching window
    # A request unanswered this long counts the connection as dead (a silent
    # partition shows only so); a join may take the rebalance timeout on top.
    "request_timeout": (5.0, 0.5),
}
# URL parameters that are whole numbers (1 or more) -> default.
_COUNTS: dict[str, int] = {
    "partitions": 8,  # of a topic millstream creates
    "replication": 1,  # replication factor of a topic millstream creates
    "batch_size": 1_048_576,  # producer batch bytes
}
_FLAGS = {"idempotence": True}
_TEXT = {"security_protocol": "", "sasl_mechanism": "SCRAM-SHA-512"}


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """What a ``kafka://`` URL says."""

    bootstrap: tuple[str, ...]
    partitions: int = 8
    replication: int = 1
    session_timeout: float = 10.0
    heartbeat: float = 1.0
    rebalance_timeout: float = 30.0
    max_poll_interval: float = 300.0
    drain: float = 10.0
    linger: float = 0.005
    batch_size: int = 1_048_576
    request_timeout: float = 5.0
    idempotence: bool = True
    username: str | None = None
    password: str | None = None
    security_protocol: str = ""
    sasl_mechanism: str = "SCRAM-SHA-512"

    @property
    def join_timeout(self) -> float:
        """How long a JoinGroup or SyncGroup answer may take: the coordinator holds it
        until the rebalance is done, the rebalance timeout in Kafka, the session
        timeout of a member that stopped answering in Tansu."""
        return max(self.rebalance_timeout, self.session_timeout) + self.request_timeout

    def client(self) -> dict[str, Any]:
        """Keyword arguments every aiokafka client of this broker gets."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap),
            "request_timeout_ms": round(self.request_timeout * 1000),
            "retry_backoff_ms": 100,
            "metadata_max_age_ms": 60_000,
        }
        protocol = self.security_protocol or ("SASL_PLAINTEXT" if self.username else "PLAINTEXT")
        kwargs["security_protocol"] = protocol
        if protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.username or ""
            kwargs["sasl_plain_password"] = self.password or ""
        if protocol.endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context()
        return kwargs


def parse_url(url: str) -> KafkaOptions:
    """Read ``url``; raises ``ConfigError`` naming the URL, what is wrong and the expected form."""
    shown = redact(url)
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ConfigError(f"broker URL {shown!r} is not a Kafka URL; expected {EXPECTED}")
    hosts = parts.netloc.rpartition("@")[2]
    bootstrap = tuple(h.strip() for h in hosts.split(",") if h.strip())
    if not bootstrap:
        raise ConfigError(f"broker URL {shown!r} has no host; expected {EXPECTED}")
    for host in bootstrap:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ConfigError(
                f"broker URL {shown!r}: {host!r} is not host:port; expected {EXPECTED}"
            )
    values: dict[str, Any] = {}
    for name, raw in parse_qsl(parts.query, keep_blank_values=True):
        values[name] = _value(url, name, raw)
    username = password = None
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user), unquote(secret)
    return KafkaOptions(bootstrap, username=username, password=password, **values)


def _value(url: str, name: str, raw: str) -> Any:
    shown = redact(url)
    example = f"kafka://127.0.0.1:9092?{name}="
    if name in _FLAGS:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"broker URL {shown!r}: {name}={raw!r} must be true or false")
    if name in _TEXT:
        return raw.upper()
    if name in _COUNTS:
        return query_count(url, name, raw, example=f"{example}{_COUNTS[name]}")
    if name not in _SECONDS:
        known = ", ".join(sorted([*_SECONDS, *_COUNTS, *_FLAGS, *_TEXT]))
        raise ConfigError(f"broker URL {shown!r}: unknown parameter {name!r}; known: {known}")
    default, floor = _SECONDS[name]
    example = f"{example}{default:g}"
    return query_seconds(url, name, raw, example=example, allow_zero=floor == 0, least=floor)


class KafkaConnection:
    """The producer and admin client of one broker object, shared by all its parts.

    Subscriptions and dead-letter queues get this, not the broker: they send
    records through it (:mod:`millstream.brokers.kafka.topics`) and wrap
    clients of their own with :meth:`adopt`.

    ``route`` maps an address the cluster advertises to the one to dial;
    tests use it to put a proxy in front of every connection.
    """

    def __init__(self, url: str, options: KafkaOptions, route: Route | None = None) -> None:
        self.url = url
        self.options = options
        self.route = route
        self.topics: dict[str, int] = {}  # partitions of each topic known to exist
        self.turns: dict[str, int] = {}  # per topic: picks the next call's keyless partition
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Future[Any]] = set()

    async def open(self) -> None:
        """Start the producer and admin client (checking the cluster answers); safe to repeat."""
        async with self._lock:
            if self._producer is not None:
                return
            options = self.options
            producer = AIOKafkaProducer(
                **options.client(),
                client_id=f"millstream-{os.getpid()}",
                acks="all",
                enable_idempotence=options.idempotence,
                linger_ms=round(options.linger * 1000),
                max_batch_size=options.batch_size,
            )
            admin = AIOKafkaAdminClient(**options.client(), client_id=f"millstream-{os.getpid()}")
            self.adopt(producer.client)
            self.adopt(admin._client)
            try:
                await self._start(producer, admin)
            except BaseException as exc:
                with suppress(Exception):
                    await producer.stop()
                with suppress(Exception):
                    await admin.close()
                if isinstance(exc, BrokerUnavailable):
                    await refuse_unknown_hosts(self.url, exc)
                raise
            self._producer, self._admin = producer, admin

    async def _start(self, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient) -> None:
        with translated(self.url):
            await admin.start()
            try:
                await producer.start()
            except kafka_errors.UnknownError as exc:
                if self.options.idempotence:
                    raise BrokerError(
                        f"broker {redact(self.url)} refused an idempotent producer "
                        f"({exc!r}); if it cannot do idempotence (e.g. Tansu), add "
                        "?idempotence=false to the URL"
                    ) from exc
                raise

    async def close(self) -> None:
        """Wait (bounded) for work left in the background, then stop the clients."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=self.options.request_timeout)
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        self.topics.clear()
        if producer is not None:
            with suppress(Exception):
                await asyncio.wait_for(producer.stop(), self.options.request_timeout)
        if admin is not None:
            with suppress(Exception):
                await admin.close()

    def adopt(self, client: Any) -> None:
        """Apply ``route`` to an aiokafka client before it connects."""
        route = self.route
        if route is None:
            return
        cluster: ClusterMetadata = client.cluster
        original = cluster.broker_metadata

        def routed(node_id: Any) -> BrokerMetadata | None:
            found = original(node_id)
            if found is None:
                return None
            host, port = route(found.host, found.port)
            return BrokerMetadata(found.nodeId, host, port, found.rack)

        cluster.broker_metadata = routed
        bootstrap = getattr(client, "_bootstrap_servers", None)
        if isinstance(bootstrap, list):
            pairs = [tuple(b.rsplit(":", 1)) for b in bootstrap]
            client._bootstrap_servers = [":".join(map(str, route(h, int(p)))) for h, p in pairs]

    def producer(self) -> AIOKafkaProducer:
        """The shared producer, else ``BrokerUnavailable`` (not connected, or closed)."""
        if self._producer is None:
            raise BrokerUnavailable(f"broker {redact(self.url)}: not connected")
        return self._producer

    def admin(self) -> AIOKafkaAdminClient:
        """The shared admin client, else ``BrokerUnavailable`` (not connected, or closed)."""
        if self._admin is None:
            raise BrokerUnavailable(f"broker {redact(self.url)}: not connected")
        return self._admin

    def in_background(self, work: asyncio.Future[Any]) -> None:
        """Keep ``work`` (a member leaving over a broken network) until it ends; ``close`` waits."""
        self._background.add(work)
        work.add_done_callback(self._background.discard)
        work.add_done_callback(lambda done: done.cancelled() or done.exception())


_REFUSED = (
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.AuthenticationFailedError,
    kafka_errors.AuthenticationMethodNotSupported,
    kafka_errors.UnsupportedSaslMechanismError,
    kafka_errors.IllegalSaslStateError,
)
_FORBIDDEN = (
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.GroupAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
)
_NOT_KAFKA = (
    kafka_errors.UnrecognizedBrokerVersion,
    kafka_errors.KafkaProtocolError,
    kafka_errors.CorrelationIdError,
)


@contextmanager
def translated(url: str) -> Iterator[None]:
    """Raise what aiokafka raises inside as millstream's exception tree."""
    shown = redact(url)
    try:
        yield
    except _REFUSED as exc:
        raise _refused(url, _text(exc)) from exc
    except (KeyError, ValueError) as exc:
        said = _scram_refusal(exc)
        if said is None:
            raise
        raise _refused(url, f"SCRAM: {said or 'an answer that is not SCRAM'}") from exc
    except _FORBIDDEN as exc:
        raise AuthenticationError(
            f"broker URL {shown!r} refused an operation ({_text(exc)}); grant the user "
            "Read/Write/Describe/Create on the topic, its .retry.<group> and .dlq topics, "
            "and Read on the group and <group>.deliveries"
        ) from exc
    except _NOT_KAFKA as exc:
        raise AuthenticationError(
            f"broker URL {shown!r} answered but does not speak the Kafka protocol "
            f"({_text(exc)}); point the URL at a Kafka broker's listener"
        ) from exc
    except (
        kafka_errors.KafkaConnectionError,
        kafka_errors.NodeNotReadyError,
        kafka_errors.KafkaTimeoutError,
        kafka_errors.RequestTimedOutError,
        kafka_errors.NoBrokersAvailable,
        kafka_errors.StaleMetadata,
        kafka_errors.NotCoordinatorForGroupError,
        kafka_errors.GroupCoordinatorNotAvailableError,
        kafka_errors.LeaderNotAvailableError,
        kafka_errors.NotLeaderForPartitionError,
        kafka_errors.ProducerClosed,
        kafka_errors.ConsumerStoppedError,
        TimeoutError,
        OSError,
    ) as exc:
        raise BrokerUnavailable(f"broker {shown} is unreachable: {_text(exc)}") from exc
    except kafka_errors.KafkaError as exc:
        if getattr(exc, "retriable", False):
            raise BrokerUnavailable(f"broker {shown} is not serving: {_text(exc)}") from exc
        raise BrokerError(f"broker {shown} failed: {_text(exc)}") from exc


def _refused(url: str, reason: str) -> AuthenticationError:
    fix = (
        "put the user and password in the URL (kafka://user:password@host:9092)"
        if "@" not in url
        else "check the user, password and ?sasl_mechanism= (SCRAM-SHA-512 by default)"
    )
    return AuthenticationError(
        f"broker URL {redact(url)!r} refused the credentials ({reason}); {fix}"
    )


# aiokafka's SCRAM steps and the argument holding what the server said.
_SCRAM_STEPS = {
    "process_server_first_message": "server_first",
    "process_server_final_message": "server_final",
}


def _scram_refusal(exc: BaseException) -> str | None:
    """What the server said, when ``exc`` broke aiokafka's SCRAM exchange; else ``None``.

    A server may refuse SCRAM credentials inside the exchange, as RFC 5802
    has it (``e=unknown-user``, ``e=invalid-proof``), rather than with
    Kafka's error code. aiokafka does not read that answer: it fails with a
    ``KeyError`` or ``ValueError`` on it, which is a refusal all the same.
    """
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        argument = _SCRAM_STEPS.get(frame.f_code.co_name)
        if argument is not None and frame.f_globals.get("__name__") == "aiokafka.conn":
            said = frame.f_locals.get(argument)
            return said if isinstance(said, str) else ""
        tb = tb.tb_next
    return None


def _text(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text and name not in text else (text or name)
