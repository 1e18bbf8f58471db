"""The handler chain: decode the payload by the handler's type hint and call it.

A consumer's handler is wrapped once, at start, into an ``Invoke``: a
coroutine function taking a ``Message``. Links (timeout here; tracing and
metrics in the service layer) each wrap an ``Invoke`` into another, so every
concern is small and testable alone and the per-message path is a few nested
calls, not a branchy loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import typing
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from millstream.errors import HandlerSignatureError
from millstream.message import Message
from millstream.runtime.decoding import ACCEPTED, Decoder, decoder_for
from millstream.runtime.dependencies import Dependencies, Overrides, dependant_of
from millstream.runtime.injected import Injected
from millstream.settings import Settings

if TYPE_CHECKING:
    from millstream.runtime.spec import ConsumerSpec

__all__ = [
    "Handler",
    "HandlerLink",
    "Injected",
    "Invoke",
    "bind_handler",
    "injected_types",
    "payload_decoder",
    "payload_type",
    "with_timeout",
]

Handler = Callable[..., Any]
Invoke = Callable[[Message], Awaitable[None]]


class HandlerLink(Protocol):
    """Wraps a consumer's ``Invoke`` in one concern, once, at start.

    Gets the consumer's spec (name, topic, group) so it can bind labels and
    names up front rather than per message. The returned ``Invoke`` must
    re-raise what the inner call raises: the runtime classifies it.
    """

    def __call__(self, consumer: ConsumerSpec, inner: Invoke) -> Invoke: ...


# What fills a handler parameter, found by its type hint: the payload, the
# envelope, or an ``Injected`` type's current instance.
_PAYLOAD, _ENVELOPE = "payload", "envelope"
Role = str | type[Injected]


@dataclass(frozen=True, slots=True)
class _Signature:
    decoder: Decoder
    positional: tuple[Role, ...]
    """What each leading positional parameter takes, in order."""
    keywords: tuple[tuple[str, Role], ...] = ()
    """(parameter name, what it takes) for the rest."""
    dependencies: Dependencies | None = None
    """The ``Depends`` parameters, passed by keyword, if there are any."""
    payload: Any = None
    """The payload parameter's type hint: what ``decoder`` decodes into."""

    @property
    def injected(self) -> frozenset[type[Injected]]:
        roles = (*self.positional, *(role for _, role in self.keywords))
        own = frozenset(role for role in roles if isinstance(role, type))
        return own if self.dependencies is None else own | self.dependencies.injected


def _inspect(handler: Handler) -> _Signature:
    """Bind each parameter by its type hint, in any order: one takes the payload (decoded
    by its hint), a ``Message`` one the envelope, an ``Injected`` one its current instance;
    one with a ``Depends`` is left to its dependency."""
    name = getattr(handler, "__qualname__", repr(handler))
    try:
        parameters = list(inspect.signature(handler).parameters.values())
        hints = typing.get_type_hints(handler)
        extras = typing.get_type_hints(handler, include_extras=True)
    except NameError as exc:
        raise HandlerSignatureError(
            f"handler {name}: cannot resolve its type hints ({exc}); define the types it "
            "names at module level, where annotations are resolved"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise HandlerSignatureError(f"handler {name}: cannot read its signature ({exc})") from exc
    fillable = [p for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not fillable:
        raise HandlerSignatureError(
            f"handler {name} takes no parameters; give it one for the payload, "
            f"annotated with {ACCEPTED}, e.g. `async def {name}(payment: Payment) -> None`"
        )
    dependencies = _dependencies(name, fillable, extras)
    undepending = [p for p in fillable if dependencies is None or p.name not in dependencies.names]
    roles = _roles(name, undepending, hints)
    injected = [role for role in roles.values() if isinstance(role, type)]
    if injected and not _is_async(handler):
        raise HandlerSignatureError(
            f"handler {name} takes a {injected[0].__name__} but is a plain def; "
            f"make it `async def {name}(...)`: the {injected[0].__name__} is used with await"
        )
    payload = next(p for p in fillable if roles.get(p.name) == _PAYLOAD)
    try:
        decoder = decoder_for(hints[payload.name])
    except Exception as exc:
        raise HandlerSignatureError(
            f"handler {name}: cannot decode into {hints[payload.name]!r} ({exc}); use {ACCEPTED}"
        ) from exc
    positional: list[Role] = []
    keywords: list[tuple[str, Role]] = []
    for parameter in fillable:
        role = roles.get(parameter.name)
        if role is None:
            continue  # it has a default and keeps it, or a dependency fills it
        if parameter.kind is parameter.KEYWORD_ONLY or len(positional) < fillable.index(parameter):
            if parameter.kind is parameter.POSITIONAL_ONLY:
                raise HandlerSignatureError(
                    f"handler {name}: positional-only parameter {parameter.name!r} follows one "
                    "the runtime leaves to its default, so it cannot be passed; reorder them"
                )
            keywords.append((parameter.name, role))
        else:
            positional.append(role)
    return _Signature(
        decoder, tuple(positional), tuple(keywords), dependencies, hints[payload.name]
    )


def _dependencies(
    name: str, parameters: list[inspect.Parameter], hints: dict[str, Any]
) -> Dependencies | None:
    """The parameters with a ``Depends``, checked with their providers; None if none has."""
    found = []
    for parameter in parameters:
        annotation = hints.get(parameter.name, parameter.annotation)
        where = f"handler {name}: parameter {parameter.name!r}"
        if dependant_of(annotation, parameter.default, where) is None:
            continue
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise HandlerSignatureError(
                f"{where} has a Depends but is positional-only, and dependencies are passed "
                "by name; drop the `/` before it"
            )
        found.append(parameter.replace(annotation=annotation))
    return Dependencies(name, found) if found else None


def _roles(
    name: str, parameters: list[inspect.Parameter], hints: dict[str, Any]
) -> dict[str, Role]:
    """What each parameter takes; raises ``HandlerSignatureError`` for one nothing fills."""
    roles: dict[str, Role] = {}
    injected = {
        hint
        for p in parameters
        if isinstance(hint := hints.get(p.name), type) and issubclass(hint, Injected)
    }
    filled: list[tuple[Role, type]] = [(hint, hint) for hint in injected]
    for role, hint in (*filled, (_ENVELOPE, Message)):
        typed = [p.name for p in parameters if hints.get(p.name) is hint]
        if len(typed) > 1:
            raise HandlerSignatureError(
                f"handler {name}: parameters {typed} are all annotated {hint.__name__}; keep one"
            )
        roles.update((each, role) for each in typed)
    # The payload: the first parameter that is neither; else a lone Message is the payload.
    rest = [p for p in parameters if p.name not in roles]
    if rest:
        payload = rest[0]
        if payload.name not in hints:
            raise HandlerSignatureError(
                f"handler {name}: parameter {payload.name!r} has no type hint; "
                f"annotate it with {ACCEPTED} so the payload can be decoded"
            )
        roles[payload.name] = _PAYLOAD
        rest = rest[1:]
    else:
        envelope = next((p.name for p in parameters if roles.get(p.name) == _ENVELOPE), None)
        if envelope is None:
            raise HandlerSignatureError(
                f"handler {name} has no parameter for the payload; add one annotated with "
                f"{ACCEPTED}, e.g. `event: dict`"
            )
        roles[envelope] = _PAYLOAD
    unfilled = [p.name for p in rest if p.default is p.empty]
    if unfilled:
        raise HandlerSignatureError(
            f"handler {name} has required parameters {unfilled} the runtime cannot fill; a "
            "handler takes the payload and, in any order, `msg: Message`, `tx: Transaction` "
            "and dependencies, `x: Annotated[T, Depends(provider)]` (others need a default)"
        )
    return roles


def _is_async(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        inspect.unwrap(handler)
    )


def check_handler(handler: Handler, overrides: Overrides | None = None) -> None:
    """Raise ``HandlerSignatureError`` now if the runtime could not call ``handler`` (with
    its dependencies replaced as ``overrides`` says)."""
    signature = _inspect(handler)
    if overrides and signature.dependencies is not None:
        signature.dependencies.check(overrides)


def injected_types(handler: Handler) -> frozenset[type[Injected]]:
    """The ``Injected`` types ``handler`` or its dependencies take (a ``Transaction``: it
    runs inside one)."""
    return _inspect(handler).injected


def payload_decoder(handler: Handler) -> Decoder:
    """How the runtime decodes a message's payload for ``handler``: by its type hint."""
    return _inspect(handler).decoder


def payload_type(handler: Handler) -> Any:
    """The type hint the runtime decodes ``handler``'s payload into: ``bytes``, ``str``,
    ``Message`` (the whole envelope), or a type pydantic validates JSON into."""
    return _inspect(handler).payload


def bind_handler(
    handler: Handler,
    executor: Callable[[], Executor],
    on_abandoned: Callable[[], None] = lambda: None,
    *,
    settings: Settings | None = None,
    overrides: Overrides | None = None,
) -> Invoke:
    """The innermost link: decode, then call ``handler``.

    A plain ``def`` runs (decode included) on ``executor()``, never on the
    event loop; the executor is looked up per call so it can be resized or
    replaced. If waiting for such a call is cancelled (a timeout), its thread
    runs on: ``on_abandoned`` is told, so the pool can be replaced rather
    than starve. A plain ``def`` that returns an awaitable (a sync decorator
    around an async function) has it awaited on the loop, never dropped.

    A handler with dependencies has them resolved on the loop first, with
    ``settings`` for those that take the ``Settings`` and the providers in
    ``overrides`` replaced; a handler without pays nothing for them.
    """
    signature = _inspect(handler)
    if signature.dependencies is not None:
        call_with = _caller_with(handler, signature)
        if not _is_async(handler):
            call_with = _in_thread(call_with, executor, on_abandoned)
        return signature.dependencies.bind(call_with, settings, overrides or {})
    decode = signature.decoder
    if _is_async(handler):
        # The handler's own coroutine is the invocation: no wrapper coroutine per
        # message. A payload that does not decode raises on the call.
        coroutine = cast(Callable[..., Awaitable[None]], handler)
        if signature.positional == (_PAYLOAD,) and not signature.keywords:

            def invoke_async(message: Message) -> Awaitable[None]:
                return coroutine(decode(message))

            return invoke_async
        if signature.positional == (_PAYLOAD, _ENVELOPE) and not signature.keywords:

            def invoke_async_envelope(message: Message) -> Awaitable[None]:
                return coroutine(decode(message), message)

            return invoke_async_envelope
        return cast(Invoke, _caller(coroutine, signature))
    return cast(Invoke, _in_thread(_caller(handler, signature), executor, on_abandoned))


def _in_thread(
    call: Callable[..., Any], executor: Callable[[], Executor], on_abandoned: Callable[[], None]
) -> Callable[..., Awaitable[None]]:
    """``call`` run on ``executor()``; an awaitable it returns is awaited on the loop."""

    def run(loop: asyncio.AbstractEventLoop, *args: Any) -> None:
        result = call(*args)
        if inspect.isawaitable(result):
            asyncio.run_coroutine_threadsafe(_awaited(result), loop).result()

    async def invoke_sync(*args: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            # The thread runs in a copy of this context, so trace spans and
            # other context variables reach a plain def handler too.
            context = contextvars.copy_context()
            await loop.run_in_executor(executor(), context.run, run, loop, *args)
        except asyncio.CancelledError:
            on_abandoned()
            raise

    return invoke_sync


def _filler(signature: _Signature) -> Callable[[Role, Message], Any]:
    decode = signature.decoder

    def fill(role: Role, message: Message) -> Any:
        if role == _PAYLOAD:
            return decode(message)
        if role == _ENVELOPE:
            return message
        assert isinstance(role, type)
        return role.current()

    return fill


def _caller(handler: Handler, signature: _Signature) -> Callable[[Message], Any]:
    """A call of ``handler`` with each parameter filled as ``signature`` binds it."""
    fill = _filler(signature)
    positional, keywords = signature.positional, signature.keywords

    def call(message: Message) -> Any:
        args = [fill(role, message) for role in positional]
        kwargs = {name: fill(role, message) for name, role in keywords}
        return handler(*args, **kwargs)

    return call


def _caller_with(
    handler: Handler, signature: _Signature
) -> Callable[[Message, dict[str, Any]], Any]:
    """Like ``_caller``, with the values of the dependency parameters passed by name."""
    fill = _filler(signature)
    positional, keywords = signature.positional, signature.keywords

    def call(message: Message, values: dict[str, Any]) -> Any:
        args = [fill(role, message) for role in positional]
        values.update({name: fill(role, message) for name, role in keywords})
        return handler(*args, **values)

    return call


async def _awaited(awaitable: Awaitable[Any]) -> None:
    await awaitable


def with_timeout(seconds: float | None) -> HandlerLink:
    """A link failing the handler with ``TimeoutError`` after ``seconds``.

    A sync handler cannot be interrupted; its thread runs on, but the message
    is classified as failed and retried.
    """

    def link(consumer: ConsumerSpec, inner: Invoke) -> Invoke:
        if seconds is None:
            return inner

        async def invoke(message: Message) -> None:
            deadline = asyncio.timeout(seconds)
            try:
                async with deadline:
                    await inner(message)
            except TimeoutError:
                if deadline.expired():
                    raise TimeoutError(f"handler took longer than {seconds}s") from None
                raise

        return invoke

    return link
