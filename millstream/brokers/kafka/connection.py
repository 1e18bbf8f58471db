"""The Kafka side of the Kafka broker: its URL, its client settings and its errors.

This is the one place where aiokafka's exceptions become millstream's
(:func:`translated`): ``BrokerUnavailable`` (reconnect), ``AuthenticationError``
(stop: refused credentials, missing ACLs, or an address that answers but is
not Kafka), ``BrokerError`` (anything else).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from aiokafka import errors as kafka_errors

from millstream.errors import AuthenticationError, BrokerError, BrokerUnavailable, ConfigError
from millstream.urls import redact

__all__ = ["KafkaOptions", "parse_url", "redact", "translated"]

EXPECTED = (
    "kafka://host:9092[,host:9092] (kafka://user:password@host:9092 for SASL/SCRAM), "
    "optionally with ?partitions=8&session_timeout=10&rebalance_timeout=30"
)

# URL parameter -> (default, smallest allowed). Durations are in seconds.
_NUMBERS: dict[str, tuple[float, float]] = {
    "partitions": (8, 1),  # of a topic millstream creates
    "replication": (1, 1),  # replication factor of a topic millstream creates
    "session_timeout": (10.0, 0.1),  # a member silent this long is out of the group
    "heartbeat": (1.0, 0.05),
    "rebalance_timeout": (30.0, 0.05),  # how long a rebalance waits for members to rejoin
    "max_poll_interval": (300.0, 0.5),  # a member that does not poll this long leaves
    "drain": (10.0, 0.0),  # how long a revoked partition waits for its handlers
    "linger": (0.005, 0.0),  # producer batching window
    "batch_size": (1_048_576, 1),  # producer batch bytes
    # A request unanswered this long counts the connection as dead (a silent
    # partition shows only so); a join may take the rebalance timeout on top.
    "request_timeout": (5.0, 0.5),
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
        values[name] = _value(shown, name, raw)
    username = password = None
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user), unquote(secret)
    for name in ("partitions", "replication", "batch_size"):
        if name in values:
            values[name] = int(values[name])
    return KafkaOptions(bootstrap, username=username, password=password, **values)


def _value(shown: str, name: str, raw: str) -> Any:
    if name in _FLAGS:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"broker URL {shown!r}: {name}={raw!r} must be true or false")
    if name in _TEXT:
        return raw.upper()
    if name not in _NUMBERS:
        known = ", ".join(sorted([*_NUMBERS, *_FLAGS, *_TEXT]))
        raise ConfigError(f"broker URL {shown!r}: unknown parameter {name!r}; known: {known}")
    floor = _NUMBERS[name][1]
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < floor:
        raise ConfigError(
            f"broker URL {shown!r}: {name}={raw!r} must be a number, at least {floor:g}; "
            f"expected e.g. kafka://127.0.0.1:9092?{name}={_NUMBERS[name][0]:g}"
        )
    return value


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
