"""Schemathesis against the service's OpenAPI schema: no request, however malformed, gets a 5xx.

Every operation is exercised with a valid bearer token (so the admin API
is reached, not just its 401) and without one. Responses must also conform
to the schema: documented status codes, content types and bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi

from millstream import FatalError, Millstream
from millstream.web import api_group
from tests.web import SECRET, bearer

CONSUMERS = ("payments", "refunds")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class Order(BaseModel):
    item: str = Field(min_length=1, max_length=100)
    quantity: int = Field(ge=1, le=1000)


def service() -> FastAPI:
    """An order service: two consumers (one with dead letters) and a small v1 API."""
    ms = Millstream(
        "memory://",
        jwt_secret=SECRET,
        dlq_replay_rate=1_000_000,
        poll_timeout=0.05,
        drain_timeout=2,
    )
    orders: dict[str, Order] = {}

    @ms.consumer("payments", name="payments")
    async def on_payment(order: Order) -> None:
        if order.quantity > 500:
            raise FatalError("no warehouse holds that many")

    @ms.consumer("refunds", name="refunds", concurrency=2)
    def on_refund(event: dict[str, Any]) -> None: ...

    app = ms.fastapi(title="orders")
    v1 = api_group(ms, 1, tags=["orders"])

    @v1.get("/orders/{order_id}", responses={404: {"description": "No such order"}})
    async def order(order_id: str) -> Order:
        found = orders.get(order_id)
        if found is None:
            from fastapi import HTTPException

            raise HTTPException(404, f"no order {order_id!r}")
        return found

    @v1.post("/orders/{order_id}", status_code=202)
    async def place(order_id: str, order: Order) -> dict[str, str]:
        orders[order_id] = order
        return {"message_id": await ms.publish("payments", order)}

    app.include_router(v1)
    return app


APP = service()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    """Name a real consumer most of the time, so more than the 404 path is exercised."""
    if not path_parameters or "name" not in path_parameters:
        return st.just(path_parameters)
    return st.sampled_from(
        [path_parameters, *({**path_parameters, "name": name} for name in CONSUMERS)]
    )


ANSWERS: dict[str, set[int]] = {}


@schema.hook
def after_call(context: Any, case: schemathesis.Case, response: Any) -> None:
    """Remember what each operation answered, to check below that fuzzing got past auth."""
    authorized = "authorization" in response.request.headers
    operation = f"{case.method} {case.path} {'with' if authorized else 'without'} token"
    ANSWERS.setdefault(operation, set()).add(response.status_code)


@pytest.fixture(scope="module", autouse=True)
def _stop_the_service() -> Iterator[None]:
    """Schemathesis starts the app's lifespan on first use; drain it once the module is done."""
    yield
    asgi.shutdown_lifespans()


FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


@schema.parametrize()
@FUZZ
def test_no_server_error_with_a_valid_token(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=bearer(), checks=CHECKS)


@schema.parametrize()
@FUZZ
def test_no_server_error_without_a_token(case: schemathesis.Case) -> None:
    response = case.call_and_validate(checks=CHECKS)
    if case.path.startswith("/admin"):
        # Refused: for want of a token, or before that for a malformed request.
        assert response.status_code in (401, 405, 422), response.text


def test_the_fuzzing_reached_the_admin_api_past_auth() -> None:
    """Guards the two tests above: with a token they must have run the routes themselves."""
    if not ANSWERS:
        pytest.skip("the fuzzing tests were not selected")
    with_token = {op: codes for op, codes in ANSWERS.items() if op.endswith(" with token")}
    pause = with_token["POST /admin/consumers/{name}/pause with token"]
    assert 200 in pause and 404 in pause
    assert 409 in pause or 409 in with_token["POST /admin/consumers/{name}/resume with token"]
    assert 200 in with_token["PUT /admin/consumers/{name}/concurrency with token"]
    assert 200 in with_token["GET /admin/consumers/{name}/dead-letters with token"]
    assert 200 in with_token["POST /admin/consumers/{name}/dead-letters/replay with token"]
    without = {op: codes for op, codes in ANSWERS.items() if op.endswith(" without token")}
    assert without["GET /admin/consumers without token"] == {401}
