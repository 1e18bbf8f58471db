"""What the admin API takes and answers: the bodies its OpenAPI schema documents."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

__all__ = [
    "CacheView",
    "ConcurrencyChange",
    "ConsumerView",
    "HistoryView",
    "LastErrorView",
    "LetterDetail",
    "LetterPage",
    "LetterSelection",
    "LetterView",
    "OutboxView",
    "ReasonView",
    "ReasonsPage",
    "SeriesView",
    "ServiceView",
]


class ConcurrencyChange(BaseModel):
    concurrency: int = Field(ge=1, le=4096, description="workers for this consumer")


class LetterSelection(BaseModel):
    """Which letters a replay or purge touches: ``ids``, or those of a ``reason``, or all."""

    ids: list[str] | None = Field(
        None, max_length=10_000, description="letter ids; null or absent (and no reason): all"
    )
    reason: str | None = Field(
        None,
        min_length=1,
        max_length=500,
        description="every letter with this reason (see /dead-letters/reasons), among the "
        "newest the reasons scan reads",
    )
    failed_until: float | None = Field(
        None,
        description="with reason: only letters that failed at or before this time (Unix "
        "seconds), so what a confirmation counted is what goes",
    )

    @model_validator(mode="after")
    def _one_way(self) -> LetterSelection:
        if self.ids is not None and self.reason is not None:
            raise ValueError("give ids or reason, not both")
        if self.failed_until is not None and self.reason is None:
            raise ValueError("failed_until applies to a reason; give reason too")
        return self


class LastErrorView(BaseModel):
    type: str = Field(description="the exception's class name")
    message: str
    at: float = Field(description="when, Unix seconds")
    source: Literal["handler", "session"] = Field(
        description="handler: a message's handler raised; session: the broker connection "
        "was lost or refused"
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
    dead: int = Field(description="messages this consumer dead-lettered since it started")
    reconnects: int
    lag: int | None = Field(description="the group's backlog; null when the broker did not tell")
    dead_letters: int | None = Field(
        description="letters in the group's dead-letter queue now; null when the broker did "
        "not answer in time"
    )
    last_error: LastErrorView | None = Field(
        description="the latest error: a handler's failure or a lost connection"
    )


class SeriesView(BaseModel):
    """One consumer's counts per bucket, aligned with ``HistoryView.at``."""

    consumed: list[int]
    acked: list[int]
    retried: list[int]
    dead: list[int]


class HistoryView(BaseModel):
    bucket_seconds: float
    window_seconds: float
    at: list[float] = Field(description="the end of each bucket, Unix seconds, oldest first")
    consumers: dict[str, SeriesView]


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
    reason: str = Field(description="the kind of failure the error names, details dropped")
    failed_at: float
    payload: str
    payload_encoding: str


class LetterDetail(LetterView):
    payload_json: str | None = Field(
        description="the payload pretty-printed, when it is JSON; null otherwise"
    )
    trace_id: str | None = Field(
        description="the trace the message was published in (its traceparent header)"
    )


class LetterPage(BaseModel):
    total: int
    items: list[LetterView]


class ReasonView(BaseModel):
    reason: str
    count: int
    first_failed_at: float
    last_failed_at: float
    example: str = Field(description="the newest letter's full error")


class ReasonsPage(BaseModel):
    total: int = Field(description="letters in the queue")
    scanned: int = Field(description="the newest letters read to group; at most the bound")
    bound: int = Field(description="how many letters a scan reads at most")
    reasons: list[ReasonView] = Field(description="most letters first")


class CacheView(BaseModel):
    name: str
    hits: int
    misses: int
    hit_rate: float | None = Field(description="hits / lookups; null before the first lookup")
    entries: int


class OutboxView(BaseModel):
    published: int = Field(description="outbox messages this instance published")
    failed_batches: int
    last_error: str | None


class ServiceView(BaseModel):
    version: str
    broker: str = Field(description="the broker URL, password hidden")
    member: str | None
    started: bool
    draining: bool
    event_loop_lag_ms: float
    outbox: OutboxView | None = Field(description="null when the app has no store")
    caches: list[CacheView]
