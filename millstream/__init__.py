"""millstream: message consumers and an HTTP API in one Python service."""

from __future__ import annotations

from millstream.app.router import Router
from millstream.brokers import connect
from millstream.brokers.base import Broker, Capabilities, DeadLetter, Lag, Subscription
from millstream.errors import (
    AuthenticationError,
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    DecodeError,
    FatalError,
    HandlerSignatureError,
    MillstreamError,
    RetryableError,
    StoreError,
)
from millstream.message import Message, OutgoingMessage
from millstream.retry import Retry, RetryPolicy
from millstream.runtime import ConsumerRuntime, ConsumerState
from millstream.runtime.dependencies import Depends
from millstream.service import Millstream
from millstream.settings import Settings
from millstream.store import Store, Transaction
from millstream.version import __version__ as __version__

__all__ = [
    "AuthenticationError",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Capabilities",
    "ConfigError",
    "ConsumerRuntime",
    "ConsumerState",
    "DeadLetter",
    "DecodeError",
    "Depends",
    "FatalError",
    "HandlerSignatureError",
    "Lag",
    "Message",
    "Millstream",
    "MillstreamError",
    "OutgoingMessage",
    "Retry",
    "RetryPolicy",
    "RetryableError",
    "Router",
    "Settings",
    "Store",
    "StoreError",
    "Subscription",
    "Transaction",
    "connect",
]
