"""JWT bearer authentication, as a FastAPI dependency for route groups."""

from __future__ import annotations

from typing import Any

import jwt
from fastapi import HTTPException, Request, status

from millstream.errors import ConfigError
from millstream.settings import Settings

__all__ = ["BearerAuth"]


class BearerAuth:
    """Verifies ``Authorization: Bearer <jwt>``; returns the token's claims.

    HS256 with ``jwt_secret`` or RS256 with ``jwt_public_key`` (both: both
    accepted). Without either, protected routes answer 401 saying which
    setting to set, so a forgotten key never means an open admin API.
    """

    def __init__(self, settings: Settings) -> None:
        self._keys: list[tuple[Any, str]] = []
        if settings.jwt_secret is not None:
            self._keys.append((settings.jwt_secret.get_secret_value(), "HS256"))
        if settings.jwt_public_key:
            rsa = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256)
            try:
                key = rsa.prepare_key(settings.jwt_public_key)
            except Exception as exc:
                raise ConfigError(
                    f"setting jwt_public_key (MILLSTREAM_JWT_PUBLIC_KEY) is not an RSA public "
                    f"key ({exc}); expected a PEM block '-----BEGIN PUBLIC KEY-----...'"
                ) from None
            self._keys.append((key, "RS256"))
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    async def __call__(self, request: Request) -> dict[str, Any]:
        if not self._keys:
            raise _unauthorized(
                "authentication is not configured: set MILLSTREAM_JWT_SECRET (HS256) "
                "or MILLSTREAM_JWT_PUBLIC_KEY (RS256)"
            )
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("missing bearer token: send 'Authorization: Bearer <jwt>'")
        return self.verify(token.strip())

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of ``token``, or 401 naming what is wrong with it.

        The key is the one configured for the token's ``alg``, so the error
        is about that key's verdict (an audience, an expiry), not another's.
        """
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        chosen = next(((key, name) for key, name in self._keys if name == algorithm), None)
        if chosen is None:
            accepted = " or ".join(name for _, name in self._keys)
            raise _unauthorized(f"invalid token: algorithm {algorithm!r} is not {accepted}")
        key, name = chosen
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[name],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"invalid token: {exc or type(exc).__name__}") from None
        return claims


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )
