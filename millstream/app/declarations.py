"""``@consumer(...)``, the same on an app and on a router: a consumer declared, not yet run.

``DeclaresConsumers`` holds the decorator once, so ``ms.consumer`` and
``router.consumer`` take the same arguments and check them the same way,
at decoration time. What it records is a :class:`Declared` consumer: its
spec without links, and what only an app can give it (a transaction, the
publishing of its return value), which the app adds when it registers it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from millstream.app.publications import returned_type
from millstream.errors import ConfigError
from millstream.retry import RetryPolicy
from millstream.runtime.handler import Handler
from millstream.runtime.spec import ConsumerSpec, KeySpec

__all__ = ["Declared", "DeclaresConsumers"]

H = TypeVar("H", bound=Handler)


@dataclass(frozen=True)
class Declared:
    """A consumer as declared: its spec (no links yet) and what an app adds to it."""

    spec: ConsumerSpec
    idempotent: bool = False
    publishes: str | None = None
    """The topic the handler's return value is published to."""
    returns: Any = None
    """The handler's return annotation: the payload type of what it publishes."""

    def prefixed(self, prefix: str) -> Declared:
        """This consumer with ``prefix`` in front of its topic and of the one it publishes to."""
        if not prefix:
            return self
        return replace(
            self,
            spec=replace(self.spec, topic=prefix + self.spec.topic),
            publishes=None if self.publishes is None else prefix + self.publishes,
        )


class DeclaresConsumers:
    """The ``consumer`` decorator; a subclass says what declaring one does (``_declare``)."""

    def consumer(
        self,
        topic: str,
        *,
        group: str | None = None,
        name: str | None = None,
        concurrency: int = 1,
        key: KeySpec = None,
        retry: RetryPolicy | None = None,
        retry_on: Sequence[type[BaseException]] = (),
        dead_on: Sequence[type[BaseException]] = (),
        timeout: float | None = None,
        prefetch: int | None = None,
        max_inflight: int | None = None,
        idempotent: bool = False,
        publishes: str | None = None,
    ) -> Callable[[H], H]:
        """Register the decorated function as the handler of ``topic`` in ``group``.

        ``group`` defaults to the consumer's ``name``, which defaults to the
        function's name. ``key`` orders messages: a payload field name, a
        callable taking the ``Message``, or ``None`` for the key given to
        ``publish``. The handler's signature is checked here, not at the
        first message.

        A handler with a ``tx: Transaction`` parameter runs inside a store
        transaction that commits when it returns. ``idempotent=True`` also
        records the message id in that transaction, so a redelivered
        message (a crash after the commit, before the ack) has no second
        effect.

        ``publishes="topic"`` publishes what the handler returns (a pydantic
        model, dict, list, str or bytes; ``None`` publishes nothing) with
        the incoming message's key, unless it returns an
        ``OutgoingMessage``. In a transaction it goes through the outbox and
        commits with the handler's writes; otherwise it is published, and
        confirmed, before the incoming message is acked.
        """

        if publishes is not None and not publishes:
            raise ConfigError(
                "publishes='' names no topic; give the topic the return value goes to"
            )

        def register(handler: H) -> H:
            consumer_name = name or getattr(handler, "__name__", None) or topic
            spec = ConsumerSpec(
                name=consumer_name,
                topic=topic,
                group=group or consumer_name,
                handler=handler,
                concurrency=concurrency,
                key=key,
                retry=(retry or RetryPolicy()).with_errors(retry_on, dead_on),
                timeout=timeout,
                prefetch=prefetch,
                max_inflight=max_inflight,
            )
            returns = None if publishes is None else returned_type(handler, spec.name, publishes)
            self._declare(Declared(spec, idempotent, publishes, returns))
            return handler

        return register

    def _declare(self, consumer: Declared) -> None:
        raise NotImplementedError
