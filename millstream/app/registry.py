"""``Registry``: the consumers an app declares and the links around every handler.

Consumers are registered before the start; at the start each spec gets the
app's links in front of its own: tracing, then the user's (``add_link``),
then the consumer's (its transaction), then the user's innermost
(``add_link(..., innermost=True)``). The runtime adds the timeout innermost
of all (see ``runtime/chains.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from millstream.errors import ConfigError
from millstream.runtime.handler import Handler, HandlerLink
from millstream.runtime.spec import ConsumerSpec

__all__ = ["Registry"]


class Registry:
    """Consumer specs by name, closed to new ones once the app has started."""

    def __init__(self, instruments: Iterable[HandlerLink]) -> None:
        self.specs: dict[str, ConsumerSpec] = {}
        self._instruments = tuple(instruments)
        self._links: list[HandlerLink] = []
        self._inner: list[HandlerLink] = []  # inside each consumer's own links
        self._runs: dict[str, Handler] = {}  # the handler the runtime calls, where it differs
        self.closed = False

    def check(self, spec: ConsumerSpec) -> None:
        """Raise ``ConfigError`` if ``spec`` cannot be registered now."""
        if self.closed:
            raise ConfigError(
                f"consumer {spec.name!r} was registered after start(); "
                "register every consumer before starting the app"
            )
        clash = self.clash(spec)
        if clash is not None:
            raise ConfigError(clash)

    def clash(self, spec: ConsumerSpec) -> str | None:
        """What stops ``spec`` from joining the consumers here, named with both parties."""
        known = self.specs.get(spec.name)
        if known is None:
            return None
        return (
            f"consumer {spec.name!r} (topic {spec.topic!r}, handler {_named(spec.handler)}) has "
            f"the name of consumer {known.name!r} (topic {known.topic!r}, handler "
            f"{_named(known.handler)}) already in the app; names are unique in an app: "
            "give one of them a different name="
        )

    def add(self, spec: ConsumerSpec, runs: Handler | None = None) -> None:
        """Add ``spec``; the runtime calls ``runs`` (which wraps its handler) if given."""
        self.check(spec)
        self.specs[spec.name] = spec
        if runs is not None:
            self._runs[spec.name] = runs

    def add_link(self, link: HandlerLink, *, innermost: bool = False) -> None:
        """Wrap every handler in ``link``, inside the links already added (``innermost``:
        inside each consumer's own links too)."""
        (self._inner if innermost else self._links).append(link)

    def remove_link(self, link: HandlerLink) -> None:
        """Take ``link`` out of the links every handler gets; raises ``ValueError`` if absent."""
        for links in (self._links, self._inner):
            if link in links:
                links.remove(link)
                return
        raise ValueError(f"handler link {link!r} was never added")

    def linked(self) -> Iterator[ConsumerSpec]:
        """Every spec with the app's links around its own, as the runtime runs it."""
        links, inner = (*self._instruments, *self._links), tuple(self._inner)
        for spec in self.specs.values():
            handler = self._runs.get(spec.name, spec.handler)
            linked = {"handler": handler, "links": (*links, *spec.links, *inner)}
            yield ConsumerSpec(**{**spec.__dict__, **linked})


def _named(handler: Handler) -> str:
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', handler)}"
