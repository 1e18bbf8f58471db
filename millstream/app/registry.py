"""``Registry``: the consumers an app declares and the links around every handler.

Consumers are registered before the start; at the start each spec gets the
app's links in front of its own: tracing, then the user's (``add_link``),
then the consumer's (its transaction). The runtime adds the timeout
innermost (see ``runtime/chains.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from millstream.errors import ConfigError
from millstream.runtime.handler import HandlerLink
from millstream.runtime.spec import ConsumerSpec

__all__ = ["Registry"]


class Registry:
    """Consumer specs by name, closed to new ones once the app has started."""

    def __init__(self, instruments: Iterable[HandlerLink]) -> None:
        self.specs: dict[str, ConsumerSpec] = {}
        self._instruments = tuple(instruments)
        self._links: list[HandlerLink] = []
        self.closed = False

    def check(self, name: str) -> None:
        """Raise ``ConfigError`` if a consumer called ``name`` cannot be registered now."""
        if self.closed:
            raise ConfigError(
                f"consumer {name!r} was registered after start(); "
                "register every consumer before starting the app"
            )
        if name in self.specs:
            raise ConfigError(
                f"a consumer named {name!r} is already registered; give this one a different name= "
            )

    def add(self, spec: ConsumerSpec) -> None:
        self.check(spec.name)
        self.specs[spec.name] = spec

    def add_link(self, link: HandlerLink) -> None:
        """Wrap every handler in ``link``, inside the links already added."""
        self._links.append(link)

    def linked(self) -> Iterator[ConsumerSpec]:
        """Every spec with the app's links in front of its own, as the runtime runs it."""
        links = (*self._instruments, *self._links)
        for spec in self.specs.values():
            yield ConsumerSpec(**{**spec.__dict__, "links": (*links, *spec.links)})
