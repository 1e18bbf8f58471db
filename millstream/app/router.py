"""``Router``: consumers, handler links and publishers declared in a module, added to an app later.

Like FastAPI's ``APIRouter``: a module declares ``router = Router()`` and
its consumers with ``@router.consumer(...)`` (the same arguments as
``ms.consumer``); the service adds them with ``ms.include_router(router,
prefix=...)``. A router runs nothing itself: it keeps declarations, and
each app that includes it makes its own consumers from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from millstream.app.declarations import Declared, DeclaresConsumers
from millstream.app.publications import TopicPublisher
from millstream.errors import ConfigError
from millstream.runtime.handler import HandlerLink

__all__ = ["Router"]

M = TypeVar("M")


class Router(DeclaresConsumers):
    """Consumers, handler links and publishers of one part of a service.

    ``ms.include_router(router, prefix="shop.")`` adds them to the app,
    ``prefix`` in front of every topic the router names: those its
    consumers read, those they publish to (``publishes=``) and those of
    its publishers. Consumer names and groups are left as they are.
    """

    def __init__(self) -> None:
        self._consumers: dict[str, Declared] = {}
        self._links: list[HandlerLink] = []
        self._publishers: list[TopicPublisher[Any]] = []

    @property
    def consumers(self) -> Sequence[Declared]:
        """The consumers declared so far, in order."""
        return tuple(self._consumers.values())

    @property
    def links(self) -> Sequence[HandlerLink]:
        """The links around this router's handlers, the first outermost."""
        return tuple(self._links)

    @property
    def publishers(self) -> Sequence[TopicPublisher[Any]]:
        return tuple(self._publishers)

    def _declare(self, consumer: Declared) -> None:
        name = consumer.spec.name
        if name in self._consumers:
            raise ConfigError(
                f"this router already has a consumer named {name!r} "
                f"(topic {self._consumers[name].spec.topic!r}); give this one a different name="
            )
        self._consumers[name] = consumer

    def add_link(self, link: HandlerLink) -> None:
        """Wrap this router's handlers in ``link``, inside the app's own links; the first
        added is the outermost."""
        self._links.append(link)

    def publisher(self, topic: str, *, model: type[M] | None = None) -> TopicPublisher[M]:
        """Declare a topic this router's code sends ``model`` values to.

        The publisher sends once the router is included in an app, to
        ``prefix + topic``, through that app's publish chain.
        """
        made = TopicPublisher(topic, model)
        self._publishers.append(made)
        return made
