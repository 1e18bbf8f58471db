"""What the admin routes share: the documented error answers and the operator log."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException, status

from millstream.runtime.consumer import ConsumerRuntime, ConsumerState

__all__ = ["CONFLICT", "NOT_FOUND", "acted", "require_active"]

log = logging.getLogger("millstream.web.admin")

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown consumer"}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    409: {"description": "The consumer cannot make that change in its state"},
}


def acted(claims: dict[str, Any], what: str, *args: object) -> None:
    """Log an operator's action at INFO, with the subject (``sub``) of the token that did it."""
    log.info("operator %r " + what, claims.get("sub", "(no sub claim)"), *args)


def require_active(consumer: ConsumerRuntime) -> None:
    if consumer.state in (ConsumerState.STOPPING, ConsumerState.STOPPED, ConsumerState.FAILED):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"consumer {consumer.name!r} is {consumer.state.value}; it cannot change now",
        )
