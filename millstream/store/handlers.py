"""The handler link that runs a consumer's handler inside a store transaction.

With ``idempotent=True`` the message id is recorded in the
processed-message ledger in that same transaction, before the handler
runs: if the process dies after the commit and before the ack, the
redelivered message finds its id recorded and is acked without a second
effect. If the handler fails, the transaction rolls back, ledger entry
included, and the retry runs it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from millstream.message import Message
from millstream.runtime.handler import HandlerLink, Invoke
from millstream.runtime.spec import ConsumerSpec
from millstream.store.base import Store

__all__ = ["in_transaction"]

log = logging.getLogger("millstream.store")


def in_transaction(store_of: Callable[[], Store], *, idempotent: bool) -> HandlerLink:
    """A link running the handler in a transaction of the store ``store_of()`` gives when
    the consumer starts, recording ids if ``idempotent``."""

    def link(consumer: ConsumerSpec, inner: Invoke) -> Invoke:
        group = consumer.group
        store = store_of()  # at start, not at declaration: the app may run on another store

        async def invoke(message: Message) -> None:
            async with store.transaction() as tx:
                if idempotent and not await tx.claim_message(
                    group, message.topic, message.id, time.time()
                ):
                    log.info(
                        "consumer %s: message %s was already processed; acking the duplicate",
                        consumer.name,
                        message.id,
                    )
                    return
                await inner(message)

        return invoke

    return link
