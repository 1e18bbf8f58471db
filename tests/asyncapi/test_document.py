"""The document an app describes itself with: valid AsyncAPI 3.0.0, and true to the app."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from examples.orders import OrderService, build
from millstream.app.asyncapi import Format, asyncapi_document, render
from millstream.runtime.handler import payload_type
from tests.asyncapi import problems, resolve
from tests.asyncapi.conftest import SECRET


def test_the_order_service_document_is_valid_asyncapi_3(orders: OrderService) -> None:
    started = time.perf_counter()
    document = asyncapi_document(orders.ms, title="orders", version="1.2.0")
    took = time.perf_counter() - started

    assert problems(document) == []
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "orders" and document["info"]["version"] == "1.2.0"
    assert took < 1.0  # built per request: a few milliseconds


Breaking = Callable[[dict[str, Any]], object]
BREAKINGS: dict[str, Breaking] = {
    "no info version": lambda d: d["info"].pop("version"),
    "an action AsyncAPI lacks": lambda d: d["operations"]["payments.receive"].update(
        action="consume"
    ),
    "a server without a protocol": lambda d: d["servers"]["broker"].pop("protocol"),
    "an address that is a number": lambda d: d["channels"]["payments"].update(address=42),
    "a payload type JSON Schema lacks": lambda d: d["components"]["schemas"]["PaymentEvent"].update(
        type="struct"
    ),
    "a kafka binding field that does not exist": lambda d: d["operations"][
        "payments.receive"
    ].update(bindings={"kafka": {"group": "orders", "bindingVersion": "0.5.0"}}),
    "an unknown field in a message": lambda d: d["components"]["messages"][
        "payments.PaymentEvent"
    ].update(schema={}),
    "a message that is gone": lambda d: d["components"]["messages"].pop("payments.PaymentEvent"),
    "a channel that is gone": lambda d: d["channels"].pop("orders.status-changed"),
}


@pytest.mark.parametrize("breaking", BREAKINGS.values(), ids=BREAKINGS.keys())
def test_a_broken_copy_of_the_document_fails(orders: OrderService, breaking: Breaking) -> None:
    document = asyncapi_document(orders.ms, title="orders")
    broken = copy.deepcopy(document)
    breaking(broken)

    assert problems(document) == []
    assert problems(broken) != []


def test_each_consumer_receives_and_each_publication_sends(orders: OrderService) -> None:
    ms = orders.ms
    document = asyncapi_document(ms)
    operations = document["operations"].values()
    receives = {
        op["x-millstream"]["consumer"]: op for op in operations if op["action"] == "receive"
    }
    sends = [op for op in operations if op["action"] == "send"]

    assert receives.keys() == ms.specs.keys() == {"payments", "notifications"}
    for name, spec in ms.specs.items():
        operation, told = receives[name], receives[name]["x-millstream"]
        assert resolve(document, operation["channel"]["$ref"])["address"] == spec.topic
        [listed] = operation["messages"]
        message = resolve(document, resolve(document, listed["$ref"])["$ref"])
        assert message["contentType"] == "application/json"
        schema = resolve(document, message["payload"]["$ref"])
        assert schema["title"] == payload_type(spec.handler).__name__
        assert (told["group"], told["concurrency"], told["key"]) == (
            spec.group,
            spec.concurrency,
            {"field": spec.key},
        )
        policy = spec.retry
        assert told["retry"] | {"retry_on": [], "dead_on": []} == {
            "attempts": policy.attempts,
            "backoff": policy.backoff,
            "max_backoff": policy.max_backoff,
            "jitter": policy.jitter,
            "retry_on": [],
            "dead_on": [],
        }
        layout = ms.broker.layout(spec.topic, spec.group)
        assert layout.dead_letters is not None
        dead = resolve(document, told["dead_letter_channel"]["$ref"])
        assert dead["address"] == layout.dead_letters.name
        [letter] = dead["messages"].values()
        headers = resolve(document, letter["$ref"])["headers"]["properties"]
        assert list(headers) == [name for name, _ in layout.dead_letter_headers]
    assert receives["payments"]["x-millstream"]["retry"]["attempts"] == 4
    assert [op["x-millstream"]["topic"] for op in sends] == list(ms.publications)
    by_topic = {op["x-millstream"]["topic"]: op for op in sends}
    assert by_topic.keys() == {"orders.created", "orders.status-changed"}
    changed = by_topic["orders.status-changed"]["x-millstream"]
    assert changed["declared_by"] == ["consumer 'payments'"]
    created = by_topic["orders.created"]
    assert created["x-millstream"]["declared_by"] == ["publisher"]
    [listed] = created["messages"]
    message = resolve(document, resolve(document, listed["$ref"])["$ref"])
    assert resolve(document, message["payload"]["$ref"])["title"] == "OrderCreated"


BROKERS = {
    "memory": "memory://",
    "redis": "redis://:pw@127.0.0.1:6379/2",
    "rabbitmq": "amqp://guest:pw@127.0.0.1:5672/prod",
    "nats": "nats://127.0.0.1:4222",
    "kafka": "kafka://alice:pw@k1:9092,k2:9092",
}


@pytest.mark.parametrize("url", BROKERS.values(), ids=BROKERS.keys())
def test_on_every_broker_the_document_is_valid_and_lists_the_brokers_places(
    url: str, tmp_path: Path
) -> None:
    # Naming the places needs no broker: nothing here connects.
    ms = build(broker_url=url, store_url=f"sqlite:///{tmp_path}/state.db").ms
    document = asyncapi_document(ms)

    assert problems(document) == []
    assert "pw" not in render(document, Format.JSON)
    protocol = url.partition(":")[0]
    assert {server["protocol"] for server in document["servers"].values()} == {protocol}
    addresses = {channel["address"] for channel in document["channels"].values()}
    receives = [op for op in document["operations"].values() if op["action"] == "receive"]
    for spec, operation in zip(ms.specs.values(), receives, strict=True):
        layout = ms.broker.layout(spec.topic, spec.group)
        assert {place.name for place in layout.places} <= addresses
        read = layout.queue.name if layout.queue is not None else spec.topic
        assert resolve(document, operation["channel"]["$ref"])["address"] == read
        if protocol == "kafka":
            assert operation["bindings"]["kafka"]["groupId"]["enum"] == [spec.group]


def test_a_kafka_url_listing_two_hosts_is_two_servers_without_credentials(
    tmp_path: Path,
) -> None:
    url = BROKERS["kafka"]
    document = asyncapi_document(build(broker_url=url, store_url=f"sqlite:///{tmp_path}/s.db").ms)

    assert [server["host"] for server in document["servers"].values()] == ["k1:9092", "k2:9092"]


def test_security_says_how_to_log_in_and_names_no_secret(tmp_path: Path) -> None:
    ms = build(
        broker_url="amqp://app:s3cret@127.0.0.1:5672/prod",
        store_url=f"sqlite:///{tmp_path}/state.db",
        jwt_secret=SECRET,
        jwt_audience="orders-api",
    ).ms
    document = asyncapi_document(ms)
    text = render(document, Format.YAML)

    assert "s3cret" not in text and SECRET not in text
    [server] = document["servers"].values()
    assert (server["host"], server["pathname"]) == ("127.0.0.1:5672", "/prod")
    [login] = server["security"]
    assert resolve(document, login["$ref"])["type"] == "userPassword"
    bearer = document["components"]["securitySchemes"]["bearerJwt"]
    assert (bearer["type"], bearer["scheme"], bearer["bearerFormat"]) == ("http", "bearer", "JWT")
    assert "HS256" in bearer["description"] and "'orders-api'" in bearer["description"]


def test_without_keys_or_credentials_there_is_no_security(tmp_path: Path) -> None:
    ms = build(broker_url=f"sqlite:///{tmp_path}/b.db", store_url=f"sqlite:///{tmp_path}/s.db").ms
    document = asyncapi_document(ms)

    assert "securitySchemes" not in document["components"]
    assert all("security" not in server for server in document["servers"].values())
