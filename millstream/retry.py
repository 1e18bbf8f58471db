"""Backoff maths and error classification: what happens to a message after its handler."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from millstream.errors import ConfigError, FatalError, RetryableError

__all__ = ["Dead", "Requeue", "Retry", "RetryPolicy", "describe"]


@dataclass(frozen=True, slots=True)
class Requeue:
    """Deliver the message again after ``delay`` seconds, as the next attempt."""

    delay: float


@dataclass(frozen=True, slots=True)
class Dead:
    """Park the message in the dead-letter queue with ``reason``."""

    reason: str


def describe(exc: BaseException) -> str:
    """``Type: message``, the form reasons take in the dead-letter queue."""
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a consumer retries: exponential backoff with jitter, capped.

    ``attempts`` is the number of deliveries a message gets before it is dead
    (1 means no retry). The delay before attempt ``n + 1`` is
    ``min(max_backoff, backoff * 2 ** (n - 1))``, spread by ``±jitter``
    (a fraction). ``RetryableError`` and unknown exceptions retry;
    ``FatalError`` (which includes undecodable payloads) is dead at once.
    ``retry_on`` / ``dead_on`` add exception types to either side; ``dead_on``
    wins when both match.
    """

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 60.0
    jitter: float = 0.2
    retry_on: tuple[type[BaseException], ...] = field(default=())
    dead_on: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(
                f"retry attempts={self.attempts} must be at least 1 (1 means no retry)"
            )
        if self.backoff < 0 or self.max_backoff < 0:
            raise ConfigError(
                f"retry backoff={self.backoff} and max_backoff={self.max_backoff} "
                "must be zero or more seconds"
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"retry jitter={self.jitter} must be a fraction between 0 and 1")

    def with_errors(
        self,
        retry_on: Sequence[type[BaseException]] = (),
        dead_on: Sequence[type[BaseException]] = (),
    ) -> RetryPolicy:
        """This policy with more exception types on either side."""
        return RetryPolicy(
            attempts=self.attempts,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            jitter=self.jitter,
            retry_on=self.retry_on + tuple(retry_on),
            dead_on=self.dead_on + tuple(dead_on),
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the delivery after ``attempt``; never above ``max_backoff``."""
        exponent = min(max(0, attempt - 1), 64)  # 2.0 ** 1024 overflows; the cap wins long before
        base: float = min(self.max_backoff, self.backoff * 2.0**exponent)
        if self.jitter:
            base *= 1.0 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, min(self.max_backoff, base))

    def classify(self, exc: BaseException, attempt: int) -> Requeue | Dead:
        """Turn a handler's exception on delivery ``attempt`` into what happens next."""
        if self.dead_on and isinstance(exc, self.dead_on):
            return Dead(describe(exc))
        retryable = isinstance(exc, RetryableError) or (
            bool(self.retry_on) and isinstance(exc, self.retry_on)
        )
        if not retryable and isinstance(exc, FatalError):
            return Dead(describe(exc))
        if attempt >= self.attempts:
            return Dead(f"attempts exhausted ({attempt} of {self.attempts}): {describe(exc)}")
        return Requeue(self.delay(attempt))


Retry = RetryPolicy
"""The same class as :class:`RetryPolicy`, under the shorter name users write in
``@ms.consumer(..., retry=Retry(...))``."""
