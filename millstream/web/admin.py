"""The admin API: consumers (state, pause, resume, concurrency) and their dead letters."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, Field

from millstream.brokers.base import DeadLetter
from millstream.runtime.consumer import ConsumerRuntime, ConsumerState
from millstream.runtime.replay import replay_paced
from millstream.web.errors import middleware_responses
from millstream.web.service import Service

__all__ = ["admin_router"]


class ConcurrencyChange(BaseModel):
    concurrency: int = Field(ge=1, le=4096, description="workers for this consumer")


class LetterSelection(BaseModel):
    ids: list[str] | None = Field(
        None, max_length=10_000, description="letter ids; null or absent means all"
    )


class ConsumerView(BaseModel):
    name: str
    topic: str
    group: str
    state: str
    concurrency: int
    inflight: int
    consumed: int
    acked: int
    retried: int
    dead: int
    last_error: str | None


class LetterView(BaseModel):
    id: str
    message_id: str
    key: str | None
    headers: dict[str, Any] = Field(
        description="as the broker holds them: strings, or other JSON values another "
        "producer put there"
    )
    attempts: int
    error: str
    failed_at: float
    payload: str
    payload_encoding: str


class LetterPage(BaseModel):
    total: int
    items: list[LetterView]


def _view(consumer: ConsumerRuntime) -> ConsumerView:
    stats = consumer.stats
    return ConsumerView(
        name=consumer.name,
        topic=consumer.spec.topic,
        group=consumer.spec.group,
        state=consumer.state.value,
        concurrency=consumer.concurrency,
        inflight=consumer.inflight,
        consumed=stats.consumed,
        acked=stats.acked,
        retried=stats.retried,
        dead=stats.dead,
        last_error=stats.last_error,
    )


def _letter(letter: DeadLetter) -> LetterView:
    try:
        payload, encoding = letter.payload.decode(), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(letter.payload).decode("ascii"), "base64"
    return LetterView(
        id=letter.id,
        message_id=letter.message_id,
        key=letter.key,
        headers=letter.headers,
        attempts=letter.attempts,
        error=letter.error,
        failed_at=letter.failed_at,
        payload=payload,
        payload_encoding=encoding,
    )


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown consumer"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    409: {"description": "The consumer cannot make that change in its state"},
}


def admin_router(service: Service) -> APIRouter:
    """``/admin``, behind bearer auth: the consumers, then their dead letters."""
    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        dependencies=[Depends(service.auth)],
        responses={
            401: {"description": "Missing or invalid bearer token"},
            **middleware_responses(service.settings),
        },
    )

    def consumer(name: str) -> ConsumerRuntime:
        found = service.ms.consumers.get(name)
        if found is None:
            known = ", ".join(sorted(service.ms.consumers)) or "none"
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"no consumer named {name!r}; known: {known}"
            )
        return found

    by_name: Any = Depends(consumer)
    _consumer_routes(router, service, by_name)
    _dead_letter_routes(router, service, by_name)
    return router


def _consumer_routes(router: APIRouter, service: Service, by_name: Any) -> None:
    conflict = _CONFLICT

    @router.get("/consumers", summary="Every consumer with its state and counters")
    async def consumers() -> list[ConsumerView]:
        return [_view(c) for c in service.ms.consumers.values()]

    @router.post("/consumers/{name}/pause", responses=conflict, summary="Stop fetching")
    async def pause(found: ConsumerRuntime = by_name) -> ConsumerView:
        if found.paused:
            raise HTTPException(status.HTTP_409_CONFLICT, f"consumer {found.name!r} is paused")
        _require_active(found)
        found.pause()
        return _view(found)

    @router.post("/consumers/{name}/resume", responses=conflict, summary="Fetch again")
    async def resume(found: ConsumerRuntime = by_name) -> ConsumerView:
        if not found.paused:
            raise HTTPException(status.HTTP_409_CONFLICT, f"consumer {found.name!r} is not paused")
        _require_active(found)
        found.resume()
        return _view(found)

    @router.put("/consumers/{name}/concurrency", responses=conflict, summary="Resize workers")
    async def concurrency(
        change: ConcurrencyChange, found: ConsumerRuntime = by_name
    ) -> ConsumerView:
        _require_active(found)
        found.set_concurrency(change.concurrency)
        return _view(found)


def _dead_letter_routes(router: APIRouter, service: Service, by_name: Any) -> None:
    not_found = _NOT_FOUND

    @router.get(
        "/consumers/{name}/dead-letters", responses=not_found, summary="Newest first, paged"
    )
    async def letters(
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
        found: ConsumerRuntime = by_name,
    ) -> LetterPage:
        queue = await service.ms.dead_letters(found.spec.topic, found.spec.group)
        items = await queue.list(limit=limit, offset=offset)
        return LetterPage(total=await queue.count(), items=[_letter(x) for x in items])

    @router.post(
        "/consumers/{name}/dead-letters/replay",
        responses=not_found,
        summary="Back into the group as fresh deliveries, at most dlq_replay_rate a second",
    )
    async def replay(
        selection: LetterSelection, found: ConsumerRuntime = by_name
    ) -> dict[str, int]:
        queue = await service.ms.dead_letters(found.spec.topic, found.spec.group)
        rate = service.settings.dlq_replay_rate
        return {"replayed": await replay_paced(queue, selection.ids, rate)}

    @router.post(
        "/consumers/{name}/dead-letters/purge", responses=not_found, summary="Delete for good"
    )
    async def purge(selection: LetterSelection, found: ConsumerRuntime = by_name) -> dict[str, int]:
        queue = await service.ms.dead_letters(found.spec.topic, found.spec.group)
        return {"purged": await queue.purge(selection.ids)}


def _require_active(consumer: ConsumerRuntime) -> None:
    if consumer.state in (ConsumerState.STOPPING, ConsumerState.STOPPED, ConsumerState.FAILED):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"consumer {consumer.name!r} is {consumer.state.value}; it cannot change now",
        )
