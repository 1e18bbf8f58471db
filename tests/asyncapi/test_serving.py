"""``/asyncapi.json``, ``/asyncapi.yaml`` and ``/asyncapi``, served by the service itself."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import yaml
from starlette.applications import Starlette
from starlette.routing import Mount

from examples.orders import OrderService
from millstream import Millstream
from millstream.app.asyncapi import asyncapi_document
from tests.asyncapi import problems
from tests.web import client, serving


async def test_the_document_is_served_as_json_and_as_the_same_yaml(orders: OrderService) -> None:
    async with serving(orders.app) as http:  # no token: open, like /docs
        as_json = await http.get("/asyncapi.json")
        as_yaml = await http.get("/asyncapi.yaml")

    assert as_json.status_code == as_yaml.status_code == 200
    assert as_json.headers["content-type"] == "application/json"
    assert as_yaml.headers["content-type"].startswith("application/yaml")
    document = as_json.json()
    assert yaml.safe_load(as_yaml.text) == document
    assert problems(document) == []
    # Named like the FastAPI app and its OpenAPI schema.
    app = orders.app
    assert document["info"]["title"] == app.title == "orders"
    assert document["info"]["description"] == app.description
    expected = asyncapi_document(
        orders.ms, title=app.title, version=app.version, description=app.description
    )
    assert document == json.loads(json.dumps(expected))


class _Page(HTMLParser):
    """What a page links to and which anchors it has."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.anchors: set[str] = set()
        self.loads: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.anchors.add(str(found["id"]))
        if tag == "a" and found.get("href"):
            self.links.append(str(found["href"]))
        if tag in ("script", "link", "img", "iframe") or found.get("src"):
            self.loads.append(tag)


async def test_the_page_lists_every_channel_and_operation_and_loads_nothing(
    orders: OrderService,
) -> None:
    async with serving(orders.app) as http:
        reply = await http.get("/asyncapi")
        document = (await http.get("/asyncapi.json")).json()

    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    page = _Page()
    page.feed(reply.text)
    assert page.loads == []  # no script, stylesheet or image to fetch: works offline
    assert not re.search(r"https?://", reply.text)
    for name, channel in document["channels"].items():
        assert f"channel-{name}" in page.anchors and channel["address"] in reply.text
    for name in document["operations"]:
        assert f"operation-{name}" in page.anchors
    for name in document["components"]["messages"]:
        assert f"message-{name}" in page.anchors
    internal = [link[1:] for link in page.links if link.startswith("#")]
    assert internal and set(internal) <= page.anchors  # every reference lands somewhere


async def test_the_endpoints_are_in_the_openapi_schema(orders: OrderService) -> None:
    async with serving(orders.app) as http:
        paths = (await http.get("/openapi.json")).json()["paths"]

    for path in ("/asyncapi.json", "/asyncapi.yaml", "/asyncapi"):
        operation = paths[path]["get"]
        assert operation["summary"] and "security" not in operation, path
    assert "application/yaml" in paths["/asyncapi.yaml"]["get"]["responses"]["200"]["content"]


async def test_mounted_in_plain_starlette_the_document_has_the_default_name() -> None:
    ms = Millstream("memory://")

    @ms.consumer("payments")
    async def payments(event: dict[str, int]) -> None: ...

    app = Starlette(routes=[Mount("/", app=ms.router)], lifespan=ms.lifespan)
    async with client(app) as http:
        document = (await http.get("/asyncapi.json")).json()

    assert document["info"]["title"] == "millstream service"
    assert [op["action"] for op in document["operations"].values()] == ["receive"]
