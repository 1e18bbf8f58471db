"""Schemathesis against the order service: malformed requests get a 4xx that conforms to the
schema, never a 5xx."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi

from examples.orders import build
from millstream.demo import dev_token

SECRET = "schema-secret-0123456789-0123456789"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

_DIR = tempfile.TemporaryDirectory(prefix="millstream-orders-schema-")
APP = build(
    broker_url=f"sqlite:///{_DIR.name}/broker.db",
    store_url=f"sqlite:///{_DIR.name}/state.db",
    jwt_secret=SECRET,
    drain_timeout=2,
).app
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).include(path_regex="^/api/")


@pytest.fixture(scope="module", autouse=True)
def _stop_the_service() -> Iterator[None]:
    yield
    asgi.shutdown_lifespans()
    _DIR.cleanup()


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_orders_api_answers_every_request_within_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {dev_token(SECRET)}"}, checks=CHECKS)
