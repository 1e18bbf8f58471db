"""The two chains every message passes through, built here and nowhere else.

A handled message runs the *handler chain*: the consumer's links around the
handler's ``Invoke`` (decode, then call). A published message runs the
*publish chain*: links around the broker's ``publish``. Both follow one
rule: **the first link is the outermost**. It sees the call first and the
outcome last, so tracing, placed first, has every other link's time inside
its span.

The app assembles the link lists: for a handler its own links, then the
consumer's, then the timeout (innermost, so no link's own work is cut
short), built when the consumer starts; for publishing tracing, metrics,
then the user's, built when the app is made and again when a link is added.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from millstream.message import OutgoingMessage
from millstream.runtime.handler import HandlerLink, Invoke

if TYPE_CHECKING:
    from millstream.runtime.spec import ConsumerSpec

__all__ = ["Publish", "PublishLink", "handler_chain", "publish_chain"]

Publish = Callable[[str, Sequence[OutgoingMessage]], Awaitable[None]]


class PublishLink(Protocol):
    """Wraps the publish call in one concern (trace context, metrics). Must re-raise."""

    def __call__(self, inner: Publish) -> Publish: ...


def handler_chain(
    consumer: ConsumerSpec, innermost: Invoke, links: Iterable[HandlerLink]
) -> Invoke:
    """``innermost`` wrapped in ``links``, the first outermost."""
    invoke = innermost
    for link in reversed(tuple(links)):
        invoke = link(consumer, invoke)
    return invoke


def publish_chain(innermost: Publish, links: Iterable[PublishLink]) -> Publish:
    """``innermost`` (the broker's publish) wrapped in ``links``, the first outermost."""
    publish = innermost
    for link in reversed(tuple(links)):
        publish = link(publish)
    return publish
