"""deploy/compose.yaml against the Compose Specification's JSON Schema, and its profiles."""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest

from tests.deploy.manifests import DEPLOY, ROOT, SCHEMAS, documents
from tests.deploy.test_settings_files import dotenv

Compose = dict[str, Any]
BROKERS = {"rabbitmq": "amqp", "nats": "nats", "kafka": "kafka"}


def compose() -> Compose:
    [doc] = documents(DEPLOY / "compose.yaml")
    return doc


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    # Its "$schema" is draft-07, spelt in a way jsonschema does not recognise.
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_the_compose_file_matches_the_compose_specification() -> None:
    errors = [f"{list(e.path)}: {e.message}" for e in validator().iter_errors(compose())]
    assert not errors, "\n".join(errors)


BROKEN: dict[str, Callable[[Compose], None]] = {
    "replicas as a list": lambda c: c["services"]["orders"]["deploy"].update(replicas=[3]),
    "a misspelt healthcheck field": lambda c: c["services"]["redis"]["healthcheck"].update(
        intervall="5s"
    ),
    "an unknown depends_on condition": lambda c: c["services"]["orders"]["depends_on"][
        "redis"
    ].update(condition="service_ready"),
    "a service without image or build": lambda c: c["services"].update(broken=[]),
    "a misspelt top-level key": lambda c: c.update(service=c.pop("services")),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_copy_fails(broken: str) -> None:
    doc = copy.deepcopy(compose())
    BROKEN[broken](doc)
    assert list(validator().iter_errors(doc)), f"{broken} passed the schema"


def test_orders_runs_three_instances_after_its_dependencies_are_healthy() -> None:
    services = compose()["services"]
    orders = services["orders"]
    assert orders["deploy"]["replicas"] == 3
    for name, needs in orders["depends_on"].items():
        assert needs["condition"] == "service_healthy", name
        assert "healthcheck" in services[name], f"orders waits for {name}, which has none"
        # A broker behind a profile is waited for only when its profile is on.
        assert needs.get("required", True) == ("profiles" not in services[name]), name
    assert set(orders["depends_on"]) == set(services) - {"orders"}
    # stop_grace_period (Docker's SIGKILL) beyond the drain (30 s by default).
    assert int(orders["stop_grace_period"].removesuffix("s")) > 30 + 1


def test_each_broker_profile_has_an_env_file_that_switches_to_it() -> None:
    services = compose()["services"]
    profiles = {
        profile: name
        for name, service in services.items()
        for profile in service.get("profiles", [])
    }
    assert profiles == {broker: broker for broker in BROKERS}
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    env_files = sorted((DEPLOY / "compose").glob("*.env"))
    assert [path.stem for path in env_files] == sorted(BROKERS)
    for path in env_files:
        env = dotenv(path)
        broker = path.stem
        assert env["COMPOSE_PROFILES"] == broker
        url = urlsplit(env["MILLSTREAM_BROKER_URL"])
        assert (url.scheme, url.hostname) == (BROKERS[broker], profiles[broker]), path.name
        wanted = env["MILLSTREAM_EXTRAS"].split(",")
        assert set(wanted) <= extras, f"{path.name}: {wanted} are not all extras of {extras}"
        assert {broker, "redis", "postgres"} <= set(wanted), path.name
