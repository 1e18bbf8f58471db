"""``/admin/consumers/{name}/dead-letters``: list, reasons, detail, replay and purge.

Grouping by reason and finding one letter read the queue newest first, at
most ``SCAN_BOUND`` letters: a queue larger than that is grouped by its
newest letters (the answer says how many it read), and older letters are
reached by the paged list.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, status

from millstream.brokers.base import DeadLetter, DeadLetterQueue
from millstream.observability.tracing import trace_id_of
from millstream.runtime.consumer import ConsumerRuntime
from millstream.runtime.reasons import reason_of
from millstream.runtime.replay import replay_paced
from millstream.web.admin.common import NOT_FOUND, acted
from millstream.web.admin.models import (
    LetterDetail,
    LetterPage,
    LetterSelection,
    LetterView,
    ReasonsPage,
    ReasonView,
)
from millstream.web.service import Service

__all__ = ["SCAN_BOUND", "letter_routes"]

SCAN_BOUND = 10_000
"""The newest letters a reasons scan (or a search for one letter) reads, at most."""
_PAGE = 1_000

_LETTER_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown consumer, or no such letter among the newest scanned"}
}


def letter_routes(router: APIRouter, service: Service, by_name: Any) -> None:
    operator: Any = Depends(service.auth)

    async def queue_of(consumer: ConsumerRuntime) -> DeadLetterQueue:
        return await service.ms.dead_letters(consumer.spec.topic, consumer.spec.group)

    @router.get(
        "/consumers/{name}/dead-letters", responses=NOT_FOUND, summary="Newest first, paged"
    )
    async def letters(
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
        reason: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=500,
                description=f"only letters with this reason, among the newest {SCAN_BOUND}; "
                "total is then how many of those have it",
            ),
        ] = None,
        found: ConsumerRuntime = by_name,
    ) -> LetterPage:
        queue = await queue_of(found)
        if reason is None:
            items = await queue.list(limit=limit, offset=offset)
            return LetterPage(total=await queue.count(), items=[_letter(x) for x in items])
        chosen = [x for x in await _scan(queue) if reason_of(x.error) == reason]
        return LetterPage(
            total=len(chosen), items=[_letter(x) for x in chosen[offset : offset + limit]]
        )

    @router.get(
        "/consumers/{name}/dead-letters/reasons",
        responses=NOT_FOUND,
        summary=f"The newest {SCAN_BOUND} letters grouped by reason, with counts and times",
    )
    async def reasons(found: ConsumerRuntime = by_name) -> ReasonsPage:
        """A reason is the kind of failure a letter's error names, its details (ids,
        counts) dropped: ``IllegalTransition``, ``attempts exhausted: OrderNotFound``."""
        queue = await queue_of(found)
        scanned = await _scan(queue)
        groups: dict[str, ReasonView] = {}
        for letter in scanned:  # newest first: the first of a reason is its newest
            reason = reason_of(letter.error)
            group = groups.get(reason)
            if group is None:
                groups[reason] = ReasonView(
                    reason=reason,
                    count=1,
                    first_failed_at=letter.failed_at,
                    last_failed_at=letter.failed_at,
                    example=letter.error,
                )
            else:
                group.count += 1
                group.first_failed_at = min(group.first_failed_at, letter.failed_at)
                group.last_failed_at = max(group.last_failed_at, letter.failed_at)
        ordered = sorted(groups.values(), key=lambda g: (-g.count, -g.last_failed_at))
        total = len(scanned) if len(scanned) < SCAN_BOUND else await queue.count()
        return ReasonsPage(total=total, scanned=len(scanned), bound=SCAN_BOUND, reasons=ordered)

    @router.get(
        "/consumers/{name}/dead-letters/{letter_id}",
        responses=_LETTER_NOT_FOUND,
        summary="One letter: payload (pretty JSON when it is JSON), headers, trace id",
    )
    async def letter(letter_id: str, found: ConsumerRuntime = by_name) -> LetterDetail:
        queue = await queue_of(found)
        async for page in _pages(queue):
            for candidate in page:
                if candidate.id == letter_id:
                    return _detail(candidate)
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no dead letter {letter_id!r} among the newest {SCAN_BOUND} of consumer "
            f"{found.name!r}; it may have been replayed or purged",
        )

    @router.post(
        "/consumers/{name}/dead-letters/replay",
        responses=NOT_FOUND,
        summary="Back into the group as fresh deliveries, at most dlq_replay_rate a second",
    )
    async def replay(
        selection: LetterSelection, found: ConsumerRuntime = by_name, claims: Any = operator
    ) -> dict[str, int]:
        """``ids``, the letters of a ``reason``, or (neither) all; only this consumer's
        group gets them again."""
        queue = await queue_of(found)
        ids = await _chosen(queue, selection)
        replayed = await replay_paced(queue, ids, service.settings.dlq_replay_rate)
        service.letter_counts.pop(found.name, None)
        acted(
            claims, "replayed %d dead letter(s) of %r: %s", replayed, found.name, _what(selection)
        )
        return {"replayed": replayed}

    @router.post(
        "/consumers/{name}/dead-letters/purge", responses=NOT_FOUND, summary="Delete for good"
    )
    async def purge(
        selection: LetterSelection, found: ConsumerRuntime = by_name, claims: Any = operator
    ) -> dict[str, int]:
        """``ids``, the letters of a ``reason``, or (neither) all."""
        queue = await queue_of(found)
        purged = await queue.purge(await _chosen(queue, selection))
        service.letter_counts.pop(found.name, None)
        acted(claims, "purged %d dead letter(s) of %r: %s", purged, found.name, _what(selection))
        return {"purged": purged}


async def _pages(queue: DeadLetterQueue) -> AsyncIterator[list[DeadLetter]]:
    """The newest ``SCAN_BOUND`` letters, a page at a time."""
    read = 0
    while read < SCAN_BOUND:
        wanted = min(_PAGE, SCAN_BOUND - read)
        page = await queue.list(limit=wanted, offset=read)
        if page:
            yield page
        read += len(page)
        if len(page) < wanted:
            return


async def _scan(queue: DeadLetterQueue) -> list[DeadLetter]:
    seen: dict[str, DeadLetter] = {}  # letters arriving meanwhile shift the pages: once each
    async for page in _pages(queue):
        for letter in page:
            seen.setdefault(letter.id, letter)
    return list(seen.values())


async def _chosen(queue: DeadLetterQueue, selection: LetterSelection) -> list[str] | None:
    """The ids a selection names; ``None`` for all."""
    if selection.reason is None:
        return selection.ids
    until = selection.failed_until
    return [
        letter.id
        for letter in await _scan(queue)
        if reason_of(letter.error) == selection.reason
        and (until is None or letter.failed_at <= until)
    ]


def _what(selection: LetterSelection) -> str:
    """What an operator chose, for the log: not ten thousand ids."""
    if selection.reason is not None:
        until = "" if selection.failed_until is None else f" failed until {selection.failed_until}"
        return f"reason {selection.reason!r}{until}"
    return "all" if selection.ids is None else f"{len(selection.ids)} chosen by id"


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
        reason=reason_of(letter.error),
        failed_at=letter.failed_at,
        payload=payload,
        payload_encoding=encoding,
    )


def _detail(letter: DeadLetter) -> LetterDetail:
    try:
        pretty: str | None = orjson.dumps(
            orjson.loads(letter.payload), option=orjson.OPT_INDENT_2
        ).decode()
    except orjson.JSONDecodeError:
        pretty = None
    return LetterDetail(
        **_letter(letter).model_dump(), payload_json=pretty, trace_id=trace_id_of(letter.headers)
    )
