"""The order service as production builds it, on SQLite files under the test's directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.orders import OrderService, build

SECRET = "test-secret-0123456789-0123456789"


@pytest.fixture
def orders(tmp_path: Path) -> OrderService:
    return build(
        broker_url=f"sqlite:///{tmp_path}/broker.db",
        store_url=f"sqlite:///{tmp_path}/state.db",
        jwt_secret=SECRET,
    )
