"""JWT bearer auth on the admin API and on route groups: HS256 and RS256, and every refusal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from millstream import ConfigError, Millstream
from millstream.web import api_group
from tests.web import SECRET, bearer, memory_app, serving, token


def rsa_pair() -> tuple[bytes, str]:
    """A fresh RSA key: (private key PEM, public key PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hs256_by_hand(claims: dict[str, object], key: bytes, alg: str = "HS256") -> str:
    """A JWT built without PyJWT, which refuses to make the forgeries these tests need."""
    signing_input = (
        f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    )
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def app_with_group(ms: Millstream) -> object:
    app = ms.fastapi()
    orders = api_group(ms, auth=True)

    @orders.get("/orders/{order_id}")
    async def order(order_id: str) -> dict[str, str]:
        return {"id": order_id}

    app.include_router(orders)
    return app


async def refusal(http: httpx.AsyncClient, headers: dict[str, str]) -> str:
    """The detail of a 401, checking it is one with a Bearer challenge."""
    response = await http.get("/admin/consumers", headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    detail: str = response.json()["detail"]
    return detail


async def test_hs256_token_opens_the_admin_api_and_the_protected_group() -> None:
    app = app_with_group(memory_app(jwt_secret=SECRET))
    async with serving(app) as http:
        assert (await http.get("/admin/consumers", headers=bearer())).status_code == 200
        protected = await http.get("/api/v1/orders/7", headers=bearer())
        assert (protected.status_code, protected.json()) == (200, {"id": "7"})
        assert (await http.get("/api/v1/orders/7")).status_code == 401


async def test_missing_or_malformed_authorization_header_is_401() -> None:
    app = memory_app(jwt_secret=SECRET).fastapi()
    async with serving(app) as http:
        assert "missing bearer token" in await refusal(http, {})
        assert "missing bearer token" in await refusal(http, {"authorization": token()})
        assert "missing bearer token" in await refusal(http, {"authorization": "Bearer "})
        basic = base64.b64encode(b"ops:pw").decode()
        assert "missing bearer token" in await refusal(http, {"authorization": f"Basic {basic}"})
        assert "invalid token" in await refusal(http, {"authorization": "Bearer not.a.jwt"})
        # the scheme is case-insensitive (RFC 6750 via RFC 7235)
        lower = {"authorization": f"bearer {token()}"}
        assert (await http.get("/admin/consumers", headers=lower)).status_code == 200


async def test_expired_token_is_401_saying_so() -> None:
    app = memory_app(jwt_secret=SECRET).fastapi()
    async with serving(app) as http:
        expired = bearer(exp=int(time.time()) - 120)
        assert await refusal(http, expired) == "token expired"


async def test_token_without_expiry_is_401() -> None:
    app = memory_app(jwt_secret=SECRET).fastapi()
    forever = jwt.encode({"sub": "ops"}, SECRET, algorithm="HS256")
    async with serving(app) as http:
        assert "exp" in await refusal(http, {"authorization": f"Bearer {forever}"})


async def test_token_signed_with_another_key_is_401() -> None:
    app = memory_app(jwt_secret=SECRET).fastapi()
    async with serving(app) as http:
        detail = await refusal(http, bearer("another-secret-of-sufficient-length-xx"))
        assert "invalid token" in detail
        assert "Signature" in detail


async def test_wrong_audience_or_issuer_is_401() -> None:
    ms = memory_app(jwt_secret=SECRET, jwt_audience="orders-admin", jwt_issuer="https://idp")
    app = ms.fastapi()
    good = {"aud": "orders-admin", "iss": "https://idp"}
    async with serving(app) as http:
        assert (await http.get("/admin/consumers", headers=bearer(**good))).status_code == 200
        detail = await refusal(http, bearer(**{**good, "aud": "billing"}))
        assert "audience" in detail.lower()
        assert '"aud" claim' in await refusal(http, bearer(iss="https://idp"))
        assert "issuer" in (await refusal(http, bearer(**{**good, "iss": "https://evil"}))).lower()


async def test_unsigned_token_is_refused() -> None:
    app = memory_app(jwt_secret=SECRET).fastapi()
    header = b64(b'{"alg":"none","typ":"JWT"}')
    body = b64(json.dumps({"sub": "ops", "exp": int(time.time()) + 60}).encode())
    async with serving(app) as http:
        assert "invalid token" in await refusal(http, {"authorization": f"Bearer {header}.{body}."})


async def test_rs256_with_the_public_key_from_settings() -> None:
    private, public = rsa_pair()
    other_private, _ = rsa_pair()
    app = app_with_group(memory_app(jwt_public_key=public))
    async with serving(app) as http:
        signed = {"authorization": f"Bearer {token(private.decode(), algorithm='RS256')}"}
        assert (await http.get("/admin/consumers", headers=signed)).status_code == 200
        assert (await http.get("/api/v1/orders/1", headers=signed)).status_code == 200

        forged = token(other_private.decode(), algorithm="RS256")
        assert "invalid token" in await refusal(http, {"authorization": f"Bearer {forged}"})
        expired = token(private.decode(), algorithm="RS256", exp=int(time.time()) - 60)
        assert await refusal(http, {"authorization": f"Bearer {expired}"}) == "token expired"
        # An HS256 token keyed with the public key (algorithm confusion) must not pass.
        confused = hs256_by_hand({"sub": "ops", "exp": int(time.time()) + 60}, public.encode())
        assert "invalid token" in await refusal(http, {"authorization": f"Bearer {confused}"})
        assert "invalid token" in await refusal(http, bearer(SECRET))


async def test_hs256_and_rs256_together_each_accepted_and_errors_name_the_real_problem() -> None:
    private, public = rsa_pair()
    ms = memory_app(jwt_secret=SECRET, jwt_public_key=public, jwt_audience="orders-admin")
    app = ms.fastapi()
    async with serving(app) as http:
        hs = bearer(aud="orders-admin")
        rs = {
            "authorization": "Bearer "
            + token(private.decode(), algorithm="RS256", aud="orders-admin")
        }
        assert (await http.get("/admin/consumers", headers=hs)).status_code == 200
        assert (await http.get("/admin/consumers", headers=rs)).status_code == 200
        # A validly signed token for the wrong audience says "audience", whichever key signed it.
        assert "audience" in (await refusal(http, bearer(aud="billing"))).lower()
        wrong_aud = token(private.decode(), algorithm="RS256", aud="billing")
        assert "audience" in (await refusal(http, {"authorization": f"Bearer {wrong_aud}"})).lower()
        assert await refusal(http, bearer(aud="orders-admin", exp=1)) == "token expired"


async def test_without_a_key_protected_routes_are_closed_and_say_which_setting_to_set() -> None:
    app = app_with_group(memory_app())
    async with serving(app) as http:
        detail = await refusal(http, bearer())
        assert "MILLSTREAM_JWT_SECRET" in detail and "MILLSTREAM_JWT_PUBLIC_KEY" in detail
        assert (await http.get("/api/v1/orders/1", headers=bearer())).status_code == 401
        # Probes and scrapes stay open.
        assert (await http.get("/health/live")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200


def test_a_public_key_that_is_not_one_fails_at_startup_naming_the_setting() -> None:
    ms = memory_app(jwt_public_key="-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")
    with pytest.raises(ConfigError, match=r"jwt_public_key.*MILLSTREAM_JWT_PUBLIC_KEY"):
        ms.fastapi()


async def test_unprotected_group_needs_no_token() -> None:
    ms = memory_app(jwt_secret=SECRET)
    app = ms.fastapi()
    public = api_group(ms, 2)

    @public.get("/status")
    async def status() -> dict[str, str]:
        return {"ok": "yes"}

    app.include_router(public)
    async with serving(app) as http:
        assert (await http.get("/api/v2/status")).json() == {"ok": "yes"}
