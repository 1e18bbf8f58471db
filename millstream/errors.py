"""One exception tree for everything millstream raises or reads.

::

    MillstreamError
    ├── ConfigError              a setting or URL is wrong; fails at start, names the fix
    ├── HandlerSignatureError    a handler cannot be called by the runtime (also a ConfigError)
    ├── BrokerError              anything the broker or its client library reported
    │   ├── BrokerUnavailable    connection lost or refused: the supervisor reconnects
    │   └── AuthenticationError  credentials or permissions refused: the consumer FAILS
    ├── StoreError               the state store failed: a handler's message is retried
    └── HandlerError             raised from (or for) a user handler
        ├── RetryableError       try again later, with backoff
        └── FatalError           can never succeed: straight to the dead-letter queue
            └── DecodeError      the payload did not decode into the handler's type

Broker adapters translate their client library's exceptions into this tree
at their boundary, so retry and health logic read one vocabulary. A
``BrokerError`` has ``retriable`` telling the supervisor whether reconnecting
can help.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "DecodeError",
    "FatalError",
    "HandlerError",
    "HandlerSignatureError",
    "MillstreamError",
    "RetryableError",
    "StoreError",
    "text_of",
]


class MillstreamError(Exception):
    """The root of every exception millstream raises."""


class ConfigError(MillstreamError):
    """A setting, URL or declaration is invalid. The message names the value and the fix."""


class HandlerSignatureError(ConfigError):
    """A consumer handler has a signature the runtime cannot call."""


class BrokerError(MillstreamError):
    """The broker or its client library failed."""

    retriable: bool = False


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached right now; reconnecting may help."""

    retriable = True


class AuthenticationError(BrokerError):
    """The broker refused the credentials or a permission; retrying will not help."""

    retriable = False


class StoreError(MillstreamError):
    """The state store failed (unreachable, not open, or the database reported an error)."""


class HandlerError(MillstreamError):
    """Base for exceptions a handler raises to steer what happens to its message."""


class RetryableError(HandlerError):
    """The handler failed for a reason that may pass: retry with backoff."""


class FatalError(HandlerError):
    """The message can never be handled: dead-letter it without retrying."""


class DecodeError(FatalError):
    """The payload could not be decoded into the type the handler asked for."""


def text_of(exc: BaseException) -> str:
    """What ``exc`` says, or its type's name when it says nothing (``TimeoutError()``)."""
    return str(exc) or type(exc).__name__
