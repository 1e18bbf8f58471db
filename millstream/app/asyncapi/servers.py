"""The ``servers`` of an AsyncAPI document and the security schemes they and the service use.

A server is the broker, from its URL with the credentials left out: one
per host the URL lists (a Kafka URL may list several), the protocol being
the URL's scheme. A broker URL with a user name says the broker takes a
user and password. The service's own HTTP API (JWT bearer tokens, when
``jwt_secret`` or ``jwt_public_key`` is set) is described in
``components/securitySchemes``: it guards the HTTP routes, not the broker.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from millstream.settings import Settings
from millstream.urls import url_addresses

__all__ = ["BEARER", "BROKER_LOGIN", "security_schemes", "servers"]

BROKER_LOGIN = "brokerLogin"
BEARER = "bearerJwt"

_WHAT = {
    "sqlite": "The embedded SQLite broker: a database file on this host.",
    "memory": "The in-process broker: messages never leave the process.",
}
_VERSIONS = {"amqp": "0-9-1", "amqps": "0-9-1"}


def servers(broker_url: str) -> dict[str, Any]:
    """The broker as AsyncAPI servers: one per host of ``broker_url``, no credentials."""
    parts = urlsplit(broker_url)
    protocol = parts.scheme.lower()
    hosts = url_addresses(broker_url) or [""]
    server: dict[str, Any] = {"protocol": protocol}
    if parts.path and parts.path != "/":
        server["pathname"] = parts.path
    if protocol in _VERSIONS:
        server["protocolVersion"] = _VERSIONS[protocol]
    server["description"] = _WHAT.get(protocol, f"The service's {protocol} broker.")
    if parts.netloc.rpartition("@")[0]:
        server["security"] = [{"$ref": f"#/components/securitySchemes/{BROKER_LOGIN}"}]
    if len(hosts) == 1:
        return {"broker": {"host": hosts[0], **server}}
    return {f"broker-{n}": {"host": host, **server} for n, host in enumerate(hosts, 1)}


def security_schemes(broker_url: str, settings: Settings) -> dict[str, Any]:
    """The broker's login, if its URL has one, and the HTTP API's bearer tokens, if set."""
    schemes: dict[str, Any] = {}
    if urlsplit(broker_url).netloc.rpartition("@")[0]:
        schemes[BROKER_LOGIN] = {
            "type": "userPassword",
            "description": "The user name and password of the broker URL (broker_url, "
            "MILLSTREAM_BROKER_URL).",
        }
    signed = [
        algorithm
        for algorithm, key in (("HS256", settings.jwt_secret), ("RS256", settings.jwt_public_key))
        if key
    ]
    if signed:
        claims = [
            f"`{claim}` {value!r}"
            for claim, value in (("aud", settings.jwt_audience), ("iss", settings.jwt_issuer))
            if value
        ]
        schemes[BEARER] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "The service's HTTP API, not the broker: the admin routes and "
            "the API groups declared with auth=True take `Authorization: Bearer <JWT>`, "
            f"signed {' or '.join(signed)}, with an `exp` claim"
            + (f" and {' and '.join(claims)}" if claims else "")
            + ".",
        }
    return schemes
