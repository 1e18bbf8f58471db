"""The brokers the conformance suite runs against: one factory module per broker.

``factory_<name>.py`` exposes ``factory(tmp_path) -> BrokerFactory`` (see
``factory.py`` for what a factory is and its capability flags). Every test
taking the ``brokers`` fixture runs once per broker; an adapter joins the
suite by adding its factory module, and the tests do not change. A factory
for a broker that is not reachable skips (or, with
``MILLSTREAM_REQUIRE_BROKERS=1``, fails) through ``require_service``.
"""

from __future__ import annotations

import contextlib
import importlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.conformance.factory import BrokerFactory

FACTORIES: dict[str, Callable[[Path], BrokerFactory]] = {
    module.stem.removeprefix("factory_"): importlib.import_module(
        f"tests.conformance.{module.stem}"
    ).factory
    for module in sorted(Path(__file__).parent.glob("factory_*.py"))
}


@pytest.fixture(params=list(FACTORIES))
async def brokers(
    request: pytest.FixtureRequest, tmp_path: Path, topic: str
) -> AsyncIterator[BrokerFactory]:
    factory = FACTORIES[request.param](tmp_path)
    yield factory
    for broker in factory.opened:
        # A crashed or cut connection may refuse to close cleanly.
        with contextlib.suppress(Exception):
            await broker.close()
    if factory.cleanup is not None:
        await factory.cleanup(topic)


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
