"""An app's AsyncAPI 3.0 document: channels, operations and messages from what it declares.

Every consumer is a ``receive`` operation on its topic's channel (on its
group's queue where the broker has one), every declared publication a
``send`` operation. The places the broker keeps a group's retries, delayed
publishes and dead letters are channels too, named by the broker itself
(``Broker.layout``), and the receive operation points at them. What AsyncAPI
has a binding for is a binding (Kafka's ``groupId``, an AMQP queue); the
rest of a consumer (key, concurrency, retry policy) is in ``x-millstream``.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from millstream.app.asyncapi.payloads import Mode, Payloads, name_of
from millstream.app.asyncapi.servers import security_schemes, servers
from millstream.app.publications import Publication
from millstream.brokers.base import Layout, Place
from millstream.retry import RetryPolicy
from millstream.runtime.handler import payload_type
from millstream.runtime.spec import ConsumerSpec, KeySpec
from millstream.version import __version__

if TYPE_CHECKING:
    from millstream.app.lifecycle import App

__all__ = ["ASYNCAPI_VERSION", "asyncapi_document"]

ASYNCAPI_VERSION = "3.0.0"

_DEAD_LETTER_PAYLOAD = (
    "the message's payload as it arrived: what the consumer takes, or, when it could not "
    "be decoded, whatever it was"
)


def asyncapi_document(
    app: App, *, title: str | None = None, version: str | None = None, description: str = ""
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``app``, as JSON-ready data; starts nothing.

    ``title`` and ``version`` name the service (default: "millstream service"
    and millstream's version).
    """
    info: dict[str, Any] = {
        "title": title or "millstream service",
        "version": version or __version__,
    }
    if description:
        info["description"] = description
    info["x-millstream"] = {"version": __version__}
    built = _Document(app)
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": info,
        "servers": servers(app.broker.url),
        "channels": built.channels,
        "operations": built.operations,
    }
    components: dict[str, Any] = {"messages": built.messages}
    if built.payloads.definitions:
        components["schemas"] = built.payloads.definitions
    schemes = security_schemes(app.broker.url, app.settings)
    if schemes:
        components["securitySchemes"] = schemes
    document["components"] = components
    return document


class _Document:
    """Builds the channels, operations and messages of one app, in declaration order."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.protocol = urlsplit(app.broker.url).scheme.lower()
        self.payloads = Payloads()
        self.channels: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self._ids: dict[str, str] = {}  # channel address -> channel id
        self._message_ids: dict[tuple[str, Hashable], str] = {}  # (channel, type) -> message
        specs = list(app.specs.values())
        taken = {
            spec.name: self.payloads.add(payload_type(spec.handler), "validation") for spec in specs
        }
        sent = {
            topic: [(each, self._sent_key(topic, each, specs)) for each in declared]
            for topic, declared in app.publications.items()
        }
        self.payloads.describe()
        for spec in specs:
            self._receive(spec, taken[spec.name])
        for topic, publications in sent.items():
            self._send(topic, publications)

    def _sent_key(
        self, topic: str, publication: Publication, specs: list[ConsumerSpec]
    ) -> tuple[Hashable, Mode]:
        # What a consumer of the topic takes is described as it reads it: one message per type.
        hint = _published(publication.payload)
        read = any(s.topic == topic and payload_type(s.handler) == hint for s in specs)
        return self.payloads.add(hint, "validation" if read else "serialization")

    # -- operations ------------------------------------------------------------

    def _receive(self, spec: ConsumerSpec, payload: tuple[Hashable, Mode]) -> None:
        layout = self.app.broker.layout(spec.topic, spec.group)
        topic = self._channel(spec.topic, f"Topic {spec.topic}.")
        message = self._message(topic, payload)
        read = topic if layout.queue is None else self._place(layout.queue, queue=True)
        self._add_message(read, message)
        extension: dict[str, Any] = {
            "consumer": spec.name,
            "group": spec.group,
            "topic": spec.topic,
            "key": _key(spec.key),
            "concurrency": spec.concurrency,
            "retry": _retry(spec.retry),
            **{
                name: value
                for name, value in (
                    ("timeout", spec.timeout),
                    ("prefetch", spec.prefetch),
                    ("max_inflight", spec.max_inflight),
                )
                if value is not None
            },
            **self._places(layout, message),
        }
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{read}"},
            "messages": [self._ref(read, message)],
            "title": spec.name,
            "summary": f"Consumer {spec.name}, group {spec.group}",
        }
        doc = inspect.getdoc(spec.handler)
        if doc:
            operation["description"] = doc
        bindings = self._receive_bindings(spec.group)
        if bindings:
            operation["bindings"] = bindings
        operation["x-millstream"] = extension
        self.operations[_unique(f"{_safe(spec.name)}.receive", self.operations)] = operation

    def _send(
        self, topic: str, publications: list[tuple[Publication, tuple[Hashable, Mode]]]
    ) -> None:
        channel = self._channel(topic, f"Topic {topic}.")
        refs = []
        for _, payload in publications:
            message = self._message(channel, payload)
            reference = self._ref(channel, message)
            if reference not in refs:
                refs.append(reference)
        declared = [publication.declared_by for publication, _ in publications]
        self.operations[_unique(f"{channel}.send", self.operations)] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": refs,
            "title": f"send to {topic}",
            "summary": f"Declared by {', '.join(declared)}",
            "x-millstream": {"topic": topic, "declared_by": declared},
        }

    def _receive_bindings(self, group: str) -> dict[str, Any]:
        if self.protocol == "kafka":
            return {
                "kafka": {
                    "groupId": {"type": "string", "enum": [group]},
                    "bindingVersion": "0.5.0",
                }
            }
        if self.protocol in ("amqp", "amqps"):
            return {"amqp": {"ack": True, "bindingVersion": "0.3.0"}}
        return {}

    # -- the broker's places -------------------------------------------------

    def _places(self, layout: Layout, message: str) -> dict[str, Any]:
        """Channels for the places ``layout`` names, and where the consumer points at them."""
        found: dict[str, Any] = {}
        if layout.retry:
            retries = [self._place(place) for place in layout.retry]
            for channel in retries:
                self._add_message(channel, message)
            found["retry_channels"] = [{"$ref": f"#/channels/{each}"} for each in retries]
        if layout.delay is not None:
            delayed = self._place(layout.delay)
            self._add_message(delayed, message)
            found["delay_channel"] = {"$ref": f"#/channels/{delayed}"}
        if layout.dead_letters is not None:
            dead = self._place(layout.dead_letters)
            self._add_message(dead, self._dead_letter(dead, layout))
            found["dead_letter_channel"] = {"$ref": f"#/channels/{dead}"}
        return found

    def _place(self, place: Place, *, queue: bool = False) -> str:
        """The channel of ``place``; ``queue``: a group's queue, bound as one on AMQP."""
        channel = self._channel(place.name, f"{place.kind}: {place.holds}.")
        if place.parameters:
            self.channels[channel]["parameters"] = {
                name: {"enum": list(values)} for name, values in place.parameters
            }
        if queue and self.protocol in ("amqp", "amqps"):
            self.channels[channel]["bindings"] = {
                "amqp": {"is": "queue", "queue": {"name": place.name}, "bindingVersion": "0.3.0"}
            }
        return channel

    def _dead_letter(self, channel: str, layout: Layout) -> str:
        headers = {
            "type": "object",
            "description": "What a dead letter carries besides the message's own headers "
            "(its fields or columns where the broker has no headers).",
            "properties": {
                name: {"description": meaning} for name, meaning in layout.dead_letter_headers
            },
        }
        component = f"{channel}.DeadLetter"
        self.messages.setdefault(
            component,
            {
                "name": "DeadLetter",
                "title": f"A dead letter in {channel}",
                "headers": headers,
                "payload": {"description": _DEAD_LETTER_PAYLOAD},
            },
        )
        return component

    # -- channels and messages ---------------------------------------------------

    def _channel(self, address: str, description: str) -> str:
        """The id of the channel at ``address``, made on first use."""
        known = self._ids.get(address)
        if known is not None:
            return known
        channel = _unique(_safe(address), self.channels)
        self._ids[address] = channel
        self.channels[channel] = {"address": address, "description": description, "messages": {}}
        return channel

    def _message(self, channel: str, payload: tuple[Hashable, Mode]) -> str:
        """The component id of the message ``channel`` carries with ``payload``."""
        known = self._message_ids.get((channel, payload[0]))
        if known is not None:
            return known
        described = self.payloads.payload(payload)
        message: dict[str, Any] = {"name": name_of(payload[0])}
        if described.content_type is not None:
            message["contentType"] = described.content_type
        if described.schema is not None:
            message["payload"] = described.schema
        component = _unique(_safe(f"{channel}.{message['name']}"), self.messages)
        self.messages[component] = message
        self._message_ids[(channel, payload[0])] = component
        self._add_message(channel, component)
        return component

    def _add_message(self, channel: str, component: str) -> None:
        messages = self.channels[channel]["messages"]
        if self._listed(channel, component) is None:
            name = _unique(component.rpartition(".")[2], messages)
            messages[name] = {"$ref": f"#/components/messages/{component}"}

    def _listed(self, channel: str, component: str) -> str | None:
        """The name ``channel`` lists ``component`` under, if it does."""
        target = f"#/components/messages/{component}"
        for name, ref in self.channels[channel]["messages"].items():
            if ref["$ref"] == target:
                return str(name)
        return None

    def _ref(self, channel: str, component: str) -> dict[str, str]:
        """A reference to ``component`` as ``channel`` lists it, for an operation."""
        return {"$ref": f"#/channels/{channel}/messages/{self._listed(channel, component)}"}


def _published(payload: Any) -> Any:
    """What a publication sends, ``None`` taken out of ``X | None`` (``None`` publishes
    nothing)."""
    args = typing.get_args(payload)
    if typing.get_origin(payload) in (typing.Union, types.UnionType) and type(None) in args:
        kept = tuple(arg for arg in args if arg is not type(None))
        return kept[0] if len(kept) == 1 else typing.Union[kept]  # noqa: UP007
    return payload


def _key(key: KeySpec) -> dict[str, str]:
    if key is None:
        return {"from": "the key given to publish"}
    if isinstance(key, str):
        return {"field": key}
    return {"function": getattr(key, "__qualname__", repr(key))}


def _retry(policy: RetryPolicy) -> dict[str, Any]:
    return {
        "attempts": policy.attempts,
        "backoff": policy.backoff,
        "max_backoff": policy.max_backoff,
        "jitter": policy.jitter,
        "retry_on": [error.__qualname__ for error in policy.retry_on],
        "dead_on": [error.__qualname__ for error in policy.dead_on],
    }


def _safe(text: str) -> str:
    """``text`` as an AsyncAPI component key: letters, digits, ``.``, ``-`` and ``_``."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text) or "_"


def _unique(key: str, taken: Mapping[str, Any]) -> str:
    """``key``, or ``key-2``, ``key-3``, ... whichever ``taken`` does not hold yet."""
    found, n = key, 1
    while found in taken:
        n += 1
        found = f"{key}-{n}"
    return found
