"""A message the documented payload schema accepts, the consumer's handler decodes.

Instances are generated from each receive operation's payload schema
(hypothesis-jsonschema), written as a producer would (JSON, UTF-8 text or
bytes, by the message's content type) and decoded the way the runtime
decodes that consumer's payload (``payload_decoder``). A schema looser than
the decoder fails here: the last test shows pydantic's own schema of the
order service's money field does.
"""

from __future__ import annotations

import datetime
import enum
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft7Validator
from pydantic import BaseModel, Field, TypeAdapter

from examples.orders import OrderService
from examples.orders.models import PaymentEvent
from millstream import Message, Millstream
from millstream.app.asyncapi import asyncapi_document
from millstream.errors import DecodeError
from millstream.runtime.handler import payload_decoder
from tests.asyncapi import resolve

# Formats pydantic writes that hypothesis-jsonschema does not know: a format holds, as a
# validator that checks formats reads the schema.
FORMATS = {"uuid": st.uuids().map(str)}
# No shrinking: hypothesis-jsonschema's strategies reach into hypothesis internals that its
# shrinker has since changed, so a failure is reported as first found, at once.
EXAMPLES = settings(
    max_examples=50,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)


class Colour(enum.Enum):
    RED = "red"
    BLUE = 2


class Line(BaseModel):
    sku: str = Field(min_length=1, max_length=8, pattern=r"^[A-Z][A-Z0-9-]*$")
    quantity: int = Field(ge=1, le=1000)


class Amounts(BaseModel):
    """Decimals in every form their constraints can take."""

    plain: Decimal
    positive: Annotated[Decimal, Field(gt=0)]
    money: Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]
    share: Annotated[Decimal, Field(ge=0, max_digits=3, decimal_places=3)]
    whole: Annotated[Decimal, Field(max_digits=4)]
    signed: Annotated[Decimal, Field(decimal_places=1)]
    bounded: Annotated[Decimal, Field(ge=-5, lt=5)]


class Order(BaseModel):
    id: uuid.UUID
    placed: datetime.datetime
    colour: Colour
    kind: Literal["retail", "trade"]
    lines: list[Line] = Field(min_length=1, max_length=3)
    note: str | None = None
    amounts: Amounts
    tags: dict[str, int] = {}


def typed_app() -> Millstream:
    """An app whose consumers take every kind of payload a handler may declare."""
    ms = Millstream("memory://")

    @ms.consumer("orders")
    async def orders(order: Order) -> None: ...

    @ms.consumer("amounts")
    async def amounts(value: Amounts) -> None: ...

    @ms.consumer("counts")
    async def counts(value: dict[str, int]) -> None: ...

    @ms.consumer("ids")
    async def ids(value: list[int]) -> None: ...

    @ms.consumer("either")
    async def either(value: Line | Colour) -> None: ...

    @ms.consumer("text")
    async def text(value: str) -> None: ...

    @ms.consumer("raw")
    async def raw(value: bytes) -> None: ...

    @ms.consumer("envelope")
    async def envelope(message: Message) -> None: ...

    return ms


def payloads(ms: Millstream) -> dict[str, tuple[dict[str, Any], str | None]]:
    """Each consumer's documented payload schema (standing alone, its definitions beside it)
    and content type, by consumer name."""
    document = asyncapi_document(ms)
    found = {}
    for operation in document["operations"].values():
        if operation["action"] != "receive":
            continue
        [listed] = operation["messages"]
        message = resolve(document, resolve(document, listed["$ref"])["$ref"])
        schema = {**message["payload"], "components": document["components"]}
        found[operation["x-millstream"]["consumer"]] = (schema, message.get("contentType"))
    return found


def written(content_type: str | None) -> Callable[[Any], bytes]:
    """How a producer writes an instance of the schema for ``content_type``."""
    if content_type == "application/json":
        return lambda value: json.dumps(value).encode()
    if content_type is not None and content_type.startswith("text/plain"):
        return lambda value: value.encode()
    raise AssertionError(f"no instances to write for {content_type!r}")


def round_trip(
    schema: dict[str, Any],
    content_type: str | None,
    decode: Callable[[Message], Any],
    examples: int = 50,
) -> None:
    """Decode ``examples`` payloads the schema accepts, written for ``content_type``."""
    if content_type == "application/octet-stream":
        strategy: st.SearchStrategy[bytes] = st.binary()
    else:
        strategy = from_schema(schema, custom_formats=FORMATS).map(written(content_type))

    @settings(EXAMPLES, max_examples=examples)
    @given(strategy)
    def decodes(payload: bytes) -> None:
        try:
            decode(Message("id-1", "t", payload))
        except DecodeError as exc:
            raise AssertionError(f"the schema accepts {payload!r}; the handler: {exc}") from None

    decodes()


def test_every_consumer_of_the_order_service_decodes_what_its_schema_accepts(
    orders: OrderService,
) -> None:
    documented = payloads(orders.ms)

    assert documented.keys() == orders.ms.specs.keys()
    for name, (schema, content_type) in documented.items():
        assert content_type == "application/json" and "$ref" in schema
        decode = payload_decoder(orders.ms.specs[name].handler)
        round_trip(schema, content_type, decode, examples=100)


@pytest.mark.parametrize("consumer", list(typed_app().specs))
def test_every_kind_of_payload_decodes_what_its_schema_accepts(consumer: str) -> None:
    ms = typed_app()
    schema, content_type = payloads(ms)[consumer]

    round_trip(schema, content_type, payload_decoder(ms.specs[consumer].handler))


def test_bytes_and_envelopes_take_any_bytes_and_text_is_a_string() -> None:
    documented = payloads(typed_app())

    assert documented["raw"][1] == documented["envelope"][1] == "application/octet-stream"
    assert documented["text"] == (
        {"type": "string", "components": documented["text"][0]["components"]},
        "text/plain; charset=utf-8",
    )


def test_the_money_field_is_documented_as_tight_as_it_is_checked(orders: OrderService) -> None:
    schema, _ = payloads(orders.ms)["payments"]
    valid = Draft7Validator(schema).is_valid
    event = {"order_id": "o-1", "kind": "paid"}

    for amount in ("19.00", "0.01", "0.5", "9999999999.99", None):
        assert valid(event | {"amount": amount}), amount
    for amount in ("0", "0.00", "-1", "0.001", "10000000000", "1e3", "abc", ""):
        assert not valid(event | {"amount": amount}), amount


def test_the_round_trip_fails_a_schema_looser_than_the_decoder() -> None:
    # pydantic's own schema of PaymentEvent: its amount may be any string.
    loose = TypeAdapter(PaymentEvent).json_schema()
    decode = payload_decoder(_takes_payment_event)

    def refused(value: Any) -> bool:
        try:
            decode(Message("id-1", "t", json.dumps(value).encode()))
        except DecodeError:
            return True
        return False

    found = find(from_schema(loose), refused, settings=EXAMPLES)

    assert refused(found)


async def _takes_payment_event(event: PaymentEvent) -> None: ...
