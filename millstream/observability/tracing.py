"""OpenTelemetry tracing: a PRODUCER span per publish, a CONSUMER span per handled message.

The trace context travels in message headers, written and read by the global
propagator (W3C ``traceparent``/``tracestate`` unless ``OTEL_PROPAGATORS``
says otherwise), so an HTTP request that publishes and the consumer that
handles the message share one trace, across processes and brokers.

Span names and attributes follow the OpenTelemetry messaging semantic
conventions (``send {topic}``, ``process {topic}``). Those conventions are
still in development upstream, so their names are spelled out here rather
than imported from ``opentelemetry.semconv._incubating``. Only the API is
used: without an SDK every span is a no-op that still carries the incoming
context through to what the handler publishes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final, NamedTuple
from urllib.parse import urlsplit

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue

from millstream.message import Message, OutgoingMessage
from millstream.runtime.chains import Publish, PublishLink
from millstream.runtime.handler import HandlerLink, Invoke
from millstream.runtime.spec import ConsumerSpec
from millstream.version import __version__

__all__ = ["TracingLinks", "messaging_system", "trace_id_of", "tracing_links"]

Attributes = dict[str, AttributeValue]

MESSAGING_SYSTEM: Final = "messaging.system"
DESTINATION_NAME: Final = "messaging.destination.name"
PARTITION_ID: Final = "messaging.destination.partition.id"
CONSUMER_GROUP_NAME: Final = "messaging.consumer.group.name"
OPERATION_TYPE: Final = "messaging.operation.type"
OPERATION_NAME: Final = "messaging.operation.name"
BATCH_MESSAGE_COUNT: Final = "messaging.batch.message_count"
MESSAGE_ID: Final = "messaging.message.id"
MESSAGE_BODY_SIZE: Final = "messaging.message.body.size"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
# No generic messaging convention exists for these (only per-system ones such
# as messaging.kafka.message.key), so they live in millstream's namespace.
MESSAGE_KEY: Final = "millstream.message.key"
MESSAGE_ATTEMPT: Final = "millstream.message.attempt"

# URL schemes whose messaging.system value is not the scheme itself.
_SYSTEMS: Final = {"amqp": "rabbitmq", "amqps": "rabbitmq", "rediss": "redis", "tls": "nats"}


def messaging_system(broker_url: str) -> str:
    """The ``messaging.system`` of a broker URL: ``amqp://`` is ``rabbitmq``, else the scheme."""
    scheme = urlsplit(broker_url).scheme.lower()
    return _SYSTEMS.get(scheme, scheme) or "unknown"


class TracingLinks(NamedTuple):
    """The two links that trace an app: one around each handler, one around each publish."""

    handler: HandlerLink
    publish: PublishLink


def tracing_links(
    broker_url: str | Callable[[], str], tracer_provider: TracerProvider | None = None
) -> TracingLinks:
    """Links tracing every handled message and every publish over the broker at ``broker_url``.

    ``broker_url`` may be a function giving the URL, asked each time a
    chain is built (an app may be run on another broker before it starts).
    Spans come from ``tracer_provider``, or the global provider when it is
    ``None``, looked up when each consumer starts (so an SDK set up after
    the app is made, before it starts, is used). The app installs these
    once, outermost in both chains.
    """
    tracer = trace.get_tracer("millstream", __version__, tracer_provider)
    url = broker_url if callable(broker_url) else _constant(broker_url)
    return TracingLinks(_handler_link(tracer, url, tracer_provider), _publish_link(tracer, url))


def trace_id_of(headers: Mapping[str, object]) -> str | None:
    """The id of the trace a message's headers carry (``traceparent``, as the propagator
    reads it), as 32 hex digits; ``None`` when they carry none that is valid."""
    carrier = {name: value for name, value in headers.items() if isinstance(value, str)}
    span = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    return trace.format_trace_id(span.trace_id) if span.is_valid else None


def _constant(value: str) -> Callable[[], str]:
    return lambda: value


def _broker_attributes(url: str) -> Attributes:
    attributes: Attributes = {MESSAGING_SYSTEM: messaging_system(url)}
    parts = urlsplit(url)
    if "," in parts.netloc:  # a list of bootstrap servers names no single server
        return attributes
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # an unparsable port: say nothing rather than something wrong
        return attributes
    if host:
        attributes[SERVER_ADDRESS] = host
    if host and port is not None:
        attributes[SERVER_PORT] = port
    return attributes


def _publish_link(tracer: Tracer, broker_url: Callable[[], str]) -> PublishLink:
    def link(inner: Publish) -> Publish:
        broker = _broker_attributes(broker_url())
        base: Attributes = {**broker, OPERATION_TYPE: "send", OPERATION_NAME: "send"}

        async def publish(topic: str, messages: Sequence[OutgoingMessage]) -> None:
            span = tracer.start_span(
                f"send {topic}",
                kind=SpanKind.PRODUCER,
                attributes=_send_attributes(base, topic, messages),
            )
            current = trace.set_span_in_context(span)
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=current)
            if carrier:
                for out in messages:
                    out.headers.update(carrier)
            token = context.attach(current)
            try:
                await inner(topic, messages)
            except Exception as exc:
                _record_failure(span, exc)
                raise
            finally:
                context.detach(token)
                span.end()

        return publish

    return link


def _send_attributes(
    base: Attributes, topic: str, messages: Sequence[OutgoingMessage]
) -> Attributes:
    attributes = {**base, DESTINATION_NAME: topic}
    if len(messages) != 1:
        attributes[BATCH_MESSAGE_COUNT] = len(messages)
        return attributes
    out = messages[0]
    attributes[MESSAGE_ID] = out.id
    attributes[MESSAGE_BODY_SIZE] = len(out.payload)
    if out.key is not None:
        attributes[MESSAGE_KEY] = out.key
    return attributes


def _handler_link(
    tracer: Tracer, broker_url: Callable[[], str], provider: TracerProvider | None
) -> HandlerLink:
    def link(consumer: ConsumerSpec, inner: Invoke) -> Invoke:
        if not _recording(provider):
            return _forwarding(inner)
        name = f"process {consumer.topic}"
        base: Attributes = {
            **_broker_attributes(broker_url()),
            DESTINATION_NAME: consumer.topic,
            CONSUMER_GROUP_NAME: consumer.group,
            OPERATION_TYPE: "process",
            OPERATION_NAME: "process",
        }
        creation_context = _CreationContext()
        start_span = tracer.start_span

        async def invoke(message: Message) -> None:
            # The creation context is the parent: one message, one process span.
            parent = creation_context.of(message.headers)
            span = start_span(name, parent, SpanKind.CONSUMER, base)
            if span.is_recording():  # a no-op tracer need not pay for the dict
                span.set_attributes(_message_attributes(message))
            token = context.attach(trace.set_span_in_context(span, parent))
            try:
                await inner(message)
            except Exception as exc:
                _record_failure(span, exc)
                raise
            finally:
                context.detach(token)
                span.end()

        return invoke

    return link


def _recording(provider: TracerProvider | None) -> bool:
    """Whether spans would be recorded: a provider was given, or an SDK set the global one."""
    if provider is not None:
        return not isinstance(provider, trace.NoOpTracerProvider)
    found = trace.get_tracer_provider()
    return not isinstance(found, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _forwarding(inner: Invoke) -> Invoke:
    """The handler link when no span can be recorded: it only carries the trace on.

    A message that carries a trace context has it made current around its
    handler, so what the handler publishes continues the trace, as a no-op
    tracer's span would. A message with none is handed straight on: no
    coroutine, no context switch, nothing per message but a set lookup.
    """
    fields = frozenset(propagate.get_global_textmap().fields)
    creation_context = _CreationContext()

    async def carried(message: Message) -> None:
        token = context.attach(creation_context.of(message.headers))
        try:
            await inner(message)
        finally:
            context.detach(token)

    def invoke(message: Message) -> Awaitable[None]:
        if fields.isdisjoint(message.headers):
            return inner(message)
        return carried(message)

    return invoke


class _CreationContext:
    """Extracts the context a message was created in, reusing the last result.

    Every message of a batch carries the same trace headers, and extraction
    (a regex and several allocations) costs more than the rest of the link,
    so identical headers are extracted once. Extraction is a pure function
    of the headers, and contexts are immutable, so sharing is safe. Headers
    without trace fields (the no-op tracer's) equal the initial empty state.
    """

    __slots__ = ("_context", "_headers")

    def __init__(self) -> None:
        self._headers: dict[str, str] = {}
        self._context = Context()

    def of(self, headers: Mapping[str, str]) -> Context:
        if headers != self._headers:
            self._context = propagate.extract(headers)
            self._headers = dict(headers)  # a copy: handlers may change theirs
        return self._context


def _message_attributes(message: Message) -> Attributes:
    attributes: Attributes = {
        MESSAGE_ID: message.id,
        MESSAGE_ATTEMPT: message.attempt,
        MESSAGE_BODY_SIZE: len(message.payload),
    }
    if message.key is not None:
        attributes[MESSAGE_KEY] = message.key
    if message.partition is not None:
        attributes[PARTITION_ID] = str(message.partition)
    return attributes


def _record_failure(span: Span, exc: Exception) -> None:
    if span.is_recording():
        span.record_exception(exc)
        span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
