"""The public surface is a promise: changing it should be a decision, not an accident."""

from __future__ import annotations

import millstream


def test_public_names() -> None:
    assert sorted(millstream.__all__) == [
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
    for name in millstream.__all__:
        assert getattr(millstream, name) is not None


def test_the_exception_tree_is_the_one_errors_py_draws() -> None:
    assert issubclass(millstream.ConfigError, millstream.MillstreamError)
    assert issubclass(millstream.BrokerUnavailable, millstream.BrokerError)
    assert issubclass(millstream.AuthenticationError, millstream.BrokerError)
    assert issubclass(millstream.DecodeError, millstream.FatalError)
    assert millstream.BrokerUnavailable.retriable and not millstream.AuthenticationError.retriable
    assert millstream.Retry is millstream.RetryPolicy


def test_millstream_is_the_app_with_its_http_face_and_a_version() -> None:
    from millstream.app import App
    from millstream.version import __version__

    ms = millstream.Millstream("memory://")
    assert isinstance(ms, App)
    assert ms.web.ms is ms and ms.lifespan == ms.web.lifespan and ms.router is ms.web.router
    assert millstream.__version__ == __version__
