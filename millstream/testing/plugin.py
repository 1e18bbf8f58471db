"""The pytest plugin, loaded by its entry point: the ``millstream_test`` fixture.

``async with millstream_test(ms) as t`` is ``TestApp(ms)``, except that
``--millstream-broker=URL`` and ``--millstream-store=URL`` on the pytest
command line run every such test on that broker and store: the same tests,
on the memory broker while developing and on Redis (say) in CI. Loading
the plugin only adds the fixture and the two options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from millstream.testing.harness import TestApp

if TYPE_CHECKING:
    from millstream.service import Millstream

__all__ = ["millstream_test", "pytest_addoption"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("millstream")
    group.addoption(
        "--millstream-broker",
        metavar="URL",
        default=None,
        help="run the apps of the millstream_test fixture on this broker "
        "(e.g. redis://127.0.0.1:6379/15) instead of the memory broker",
    )
    group.addoption(
        "--millstream-store",
        metavar="URL",
        default=None,
        help="run the apps of the millstream_test fixture on this store "
        "(e.g. postgresql://user@host/test_db) instead of SQLite in a temporary file",
    )


@pytest.fixture
def millstream_test(request: pytest.FixtureRequest) -> Callable[..., TestApp]:
    """Makes a ``TestApp``: ``async with millstream_test(ms) as t``.

    Keyword arguments are ``TestApp``'s; ``broker_url`` and ``store_url``
    default to ``--millstream-broker`` and ``--millstream-store``.
    """
    broker_url = request.config.getoption("millstream_broker")
    store_url = request.config.getoption("millstream_store")

    def make(ms: Millstream, **options: Any) -> TestApp:
        options.setdefault("broker_url", broker_url)
        options.setdefault("store_url", store_url)
        return TestApp(ms, **options)

    return make
