"""Dependencies in handlers, the FastAPI way: ``Annotated[T, Depends(provider)]``.

A handler parameter annotated ``Annotated[T, Depends(provider)]``, or with
the default ``Depends(provider)``, is filled for each message by calling
``provider``. A provider's own parameters are dependencies in turn, or, by
their type hint, the ``Message``, the app's ``Settings`` or an ``Injected``
type (the store's ``Transaction``). A provider that ``yield``s is cleaned up
once the handler has returned or raised, and sees what it raised. One
provider runs once per message however many parameters require it, unless
``Depends(provider, use_cache=False)``.

Resolving is fast-depends' work (FastAPI's dependency injection without the
HTTP; FastStream's resolver). This module adds the checks up front: a
signature nothing can fill fails when the consumer is declared, naming the
provider and the parameter, not at the first message. fast-depends hands
each provider its arguments by name, from one pool per message, so one name
must mean one thing across a handler's dependencies; that is checked too.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Annotated, Any

from fast_depends import Provider
from fast_depends.core import CallModel, build_call_model
from fast_depends.dependencies import Dependant
from fast_depends.utils import is_async_gen_callable, is_coroutine_callable, is_gen_callable

from millstream.errors import HandlerSignatureError
from millstream.message import Message
from millstream.runtime.injected import Injected
from millstream.settings import Settings

__all__ = ["Dependencies", "Depends", "Overrides", "dependant_of"]

Overrides = Mapping[Callable[..., Any], Callable[..., Any]]
"""Providers replaced by others, ``{original: replacement}`` (``ms.dependency_overrides``)."""
Call = Callable[[Message, dict[str, Any]], Awaitable[None]]
"""A call of the handler with the message and its dependency parameters' values, by name."""

# What a provider parameter takes from the message being handled, found by its hint.
_MESSAGE, _SETTINGS = "Message", "Settings"
Source = str | type[Injected]
# What a parameter name stands for in the pool of arguments: a value from context,
# a provider's result (the provider as declared), or nothing (it keeps its default).
Meaning = tuple[str, Any]
_RESULT, _CONTEXT = "result", "context"
_KEEPS_DEFAULT: Meaning = ("default", None)


def Depends(dependency: Callable[..., Any], *, use_cache: bool = True) -> Any:
    """Mark a parameter of a handler, or of a provider, as filled by calling ``dependency``.

    ``repo: Annotated[Repo, Depends(get_repo)]``, or ``repo: Repo =
    Depends(get_repo)``. ``dependency`` is a function or a class, sync or
    async, and may ``yield`` its value: the code after the ``yield`` runs
    once the handler has returned or raised (what it raised is raised at
    the ``yield``). A plain ``def`` runs in a thread, as in FastAPI, so a
    cheap provider is best an ``async def``. While one message is handled,
    a provider runs once however many parameters require it, unless
    ``use_cache=False``. Its result is passed as it is, not validated.
    """
    if not callable(dependency):
        raise HandlerSignatureError(
            f"Depends({dependency!r}): a dependency is a function or class that gives "
            "the value, e.g. Depends(get_repo)"
        )
    return Dependant(dependency, use_cache=use_cache, cast=False, cast_result=False)


def _metadata(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) is Annotated:
        return tuple(annotation.__metadata__)
    return ()


def _is_fastapis(mark: Any) -> bool:
    return any(
        kind.__module__ == "fastapi.params" and kind.__name__ == "Depends"
        for kind in type(mark).__mro__
    )


def dependant_of(annotation: Any, default: Any, where: str) -> Dependant | None:
    """The ``Depends`` of a parameter, in its ``Annotated`` hint or as its default."""
    marks = [default, *_metadata(annotation)]
    if any(_is_fastapis(mark) for mark in marks):
        raise HandlerSignatureError(
            f"{where} uses FastAPI's Depends; in a consumer use `from millstream import "
            "Depends`, which takes the same dependency and use_cache"
        )
    found = [mark for mark in marks if isinstance(mark, Dependant)]
    if len(found) > 1:
        raise HandlerSignatureError(
            f"{where} has more than one Depends (in Annotated and as its default); keep one"
        )
    return found[0] if found else None


def _source(annotation: Any) -> Source | None:
    hint = typing.get_args(annotation)[0] if _metadata(annotation) else annotation
    if hint is Message:
        return _MESSAGE
    if hint is Settings:
        return _SETTINGS
    if isinstance(hint, type) and issubclass(hint, Injected):
        return hint
    return None


def _named(call: Callable[..., Any]) -> str:
    target = inspect.unwrap(call) if inspect.isroutine(call) else call
    return str(getattr(target, "__qualname__", None) or getattr(type(call), "__qualname__", call))


def _parameters(call: Callable[..., Any], where: str) -> list[inspect.Parameter]:
    """``call``'s parameters, their annotations evaluated (``Annotated`` kept)."""
    try:
        return list(inspect.signature(call, eval_str=True).parameters.values())
    except NameError as exc:
        unresolved = exc
    except (AttributeError, TypeError, ValueError, SyntaxError) as exc:
        raise HandlerSignatureError(f"{where}: cannot read its signature ({exc})") from exc
    # A name not at module level (a test's local class, say) matters only in the
    # annotation of a parameter that must be filled; the return type is not read.
    function = inspect.unwrap(call)
    parameters = []
    for parameter in inspect.signature(call).parameters.values():
        annotation = parameter.annotation
        if isinstance(annotation, str) and inspect.isfunction(function):
            try:
                annotation = eval(annotation, function.__globals__)
            except NameError as exc:
                unresolved = exc
        variadic = parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        if isinstance(annotation, str) and parameter.default is parameter.empty and not variadic:
            raise HandlerSignatureError(
                f"{where}: cannot resolve the type of parameter {parameter.name!r} "
                f"({unresolved}); define the types it names at module level, where "
                "annotations are resolved"
            ) from unresolved
        parameters.append(parameter.replace(annotation=annotation))
    return parameters


@dataclass
class _Tree:
    """What a handler's dependencies take, found by walking their signatures."""

    handler: str
    overrides: Overrides
    context: dict[str, Source] = field(default_factory=dict)
    """Parameter names filled from context, and with what."""
    replaced: dict[Callable[..., Any], Callable[..., Any]] = field(default_factory=dict)
    """The overrides this handler's dependencies use."""
    meanings: dict[str, tuple[Meaning, str]] = field(default_factory=dict)
    seen: list[Callable[..., Any]] = field(default_factory=list)
    requires: list[tuple[Callable[..., Any], str]] = field(default_factory=list)
    """(provider, parameter) for each parameter of a provider that has a ``Depends``."""
    made: dict[int, Callable[..., Any]] = field(default_factory=dict)
    """The function standing for each class provider (by the class's id), see _constructor."""
    caching: dict[Callable[..., Any], bool] = field(default_factory=dict)
    """Each provider's ``use_cache``."""
    generators: bool = False
    """Whether a provider yields (and needs cleaning up)."""

    @property
    def injected(self) -> frozenset[type[Injected]]:
        return frozenset(each for each in self.context.values() if isinstance(each, type))

    def claim(self, name: str, meaning: Meaning, where: str) -> None:
        """Record what ``name`` stands for; raise if it already stands for something else."""
        known, first = self.meanings.setdefault(name, (meaning, where))
        if known != meaning:
            raise HandlerSignatureError(
                f"handler {self.handler}: parameter name {name!r} {_said(known)} in {first} "
                f"but {_said(meaning)} in {where}; dependencies get their arguments by name, "
                "so give one of them another name"
            )

    def visit(self, dependant: Dependant, path: tuple[Callable[..., Any], ...]) -> None:
        """Check one provider and, once, everything it requires."""
        original = dependant.dependency
        if self.caching.setdefault(original, dependant.use_cache) != dependant.use_cache:
            raise HandlerSignatureError(
                f"handler {self.handler}: {_named(original)} is required both cached and with "
                "use_cache=False, but a provider is cached one way for a whole handler; give "
                f"the uncached use a provider of its own (a function calling {_named(original)})"
            )
        call = self.overrides.get(original, original)
        if not callable(call):
            raise HandlerSignatureError(
                f"dependency_overrides[{_named(original)}] = {call!r} is not callable; "
                "map a provider to the function or class that replaces it"
            )
        if any(call is each for each in path):
            cycle = " -> ".join(_named(each) for each in (*path, call))
            raise HandlerSignatureError(
                f"handler {self.handler}: its dependencies require each other in a circle "
                f"({cycle}); break the circle"
            )
        where = f"dependency {_named(call)} of handler {self.handler}"
        if inspect.isclass(call):
            if id(call) not in self.made:
                self.made[id(call)] = _constructor(call, where)
            self.replaced[original] = self.made[id(call)]
        elif call is not original:
            self.replaced[original] = call
        if any(call is each for each in self.seen):
            return
        self.seen.append(call)
        self.generators = self.generators or _is_generator(call)
        for parameter in _parameters(call, where):
            self._parameter(call, parameter, where, (*path, call))

    def _parameter(
        self,
        call: Callable[..., Any],
        parameter: inspect.Parameter,
        where: str,
        path: tuple[Callable[..., Any], ...],
    ) -> None:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            return
        named = f"{where}: parameter {parameter.name!r}"
        dependant = dependant_of(parameter.annotation, parameter.default, named)
        source = None if dependant is not None else _source(parameter.annotation)
        if parameter.kind is parameter.POSITIONAL_ONLY and (dependant or source):
            raise HandlerSignatureError(
                f"{named} is positional-only, but dependencies get their arguments by name; "
                "drop the `/` before it"
            )
        if dependant is not None:
            self.claim(parameter.name, (_RESULT, dependant.dependency), where)
            self.requires.append((call, parameter.name))
            self.visit(dependant, path)
        elif source is not None:
            if isinstance(source, type) and not _is_async(call):
                raise HandlerSignatureError(
                    f"{named} is a {source.__name__}, but {_named(call)} is a plain def; make "
                    f"it `async def`: the {source.__name__} is used with await"
                )
            self.claim(parameter.name, (_CONTEXT, source), where)
            self.context[parameter.name] = source
        elif parameter.default is parameter.empty:
            raise HandlerSignatureError(
                f"{named} cannot be filled; a dependency takes other dependencies "
                "(`x: Annotated[T, Depends(provider)]`), `msg: Message`, `settings: Settings` "
                "and `tx: Transaction`; give it one of those or a default"
            )
        else:
            self.claim(parameter.name, _KEEPS_DEFAULT, where)


def _said(meaning: Meaning) -> str:
    what, thing = meaning
    if meaning == _KEEPS_DEFAULT:
        return "keeps its default"
    if what == _RESULT:
        return f"stands for the result of {_named(thing)}"
    return f"stands for the {getattr(thing, '__name__', thing)}"


def _is_async(call: Callable[..., Any]) -> bool:
    return is_coroutine_callable(call) or is_async_gen_callable(call)


def _is_generator(call: Callable[..., Any]) -> bool:
    return is_gen_callable(call) or is_async_gen_callable(call)


class Dependencies:
    """A handler's dependency parameters: checked when declared, resolved per message.

    ``parameters`` are the handler's parameters that have a ``Depends``,
    their annotations evaluated. The check runs here, with no overrides,
    and again, with the app's, when the consumer starts.
    """

    def __init__(self, handler: str, parameters: list[inspect.Parameter]) -> None:
        self.handler = handler
        self.parameters = tuple(parameters)
        self.names = frozenset(p.name for p in parameters)
        self._declared = self._walk({})
        self._model(self._declared)  # fast-depends' own objections, now rather than at start

    @property
    def injected(self) -> frozenset[type[Injected]]:
        """The ``Injected`` types the dependencies take (a ``Transaction``: run in one)."""
        return self._declared.injected

    def check(self, overrides: Overrides) -> None:
        """Raise ``HandlerSignatureError`` if the dependencies, with ``overrides``, cannot run."""
        self._model(self._walk(overrides))

    def bind(
        self, call: Call, settings: Settings | None, overrides: Overrides
    ) -> Callable[[Message], Awaitable[None]]:
        """The handler's invocation: resolve the dependencies for the message, then ``call``
        the handler with their values; ``yield`` dependencies are cleaned up once it has
        returned or raised, and see what it raised."""
        tree = self._walk(overrides)
        model = self._model(tree)
        # The handler's own dependencies, each solved as fast-depends solves those of a
        # call (nested: a yield enters the stack), from one pool of arguments and one
        # cache per message. The collecting root itself is not called: a few µs saved.
        solves = tuple(
            (name, model.dependency_provider.get_dependant(key).asolve)
            for name, key in model.dependencies.items()
        )
        sources = tuple(tree.context.items())
        if settings is None and _SETTINGS in tree.context.values():
            raise HandlerSignatureError(
                f"handler {self.handler}: a dependency takes the Settings, but none were given"
            )

        async def values(message: Message, stack: AsyncExitStack) -> dict[str, Any]:
            pool = {name: _filled(source, message, settings) for name, source in sources}
            cache: dict[Any, Any] = {}
            solved = {}
            for name, solve in solves:
                solved[name] = await solve(
                    stack=stack, cache_dependencies=cache, nested=True, **pool
                )
            return solved

        if tree.generators:

            async def invoke_with_cleanup(message: Message) -> None:
                async with AsyncExitStack() as stack:
                    await call(message, await values(message, stack))

            return invoke_with_cleanup
        unused = AsyncExitStack()  # no provider yields, so nothing enters it

        async def invoke(message: Message) -> None:
            await call(message, await values(message, unused))

        return invoke

    def _walk(self, overrides: Overrides) -> _Tree:
        tree = _Tree(self.handler, overrides)
        where = f"handler {self.handler}"
        for parameter in self.parameters:
            named = f"{where}: parameter {parameter.name!r}"
            dependant = dependant_of(parameter.annotation, parameter.default, named)
            assert dependant is not None
            tree.claim(parameter.name, (_RESULT, dependant.dependency), where)
            tree.visit(dependant, ())
        added = tree.injected - self._declared.injected if overrides else frozenset()
        if added:
            kind = next(iter(added)).__name__
            raise HandlerSignatureError(
                f"handler {self.handler}: an override in dependency_overrides takes a {kind} "
                f"its original does not, and the consumer was declared without one; give the "
                f"original dependency the {kind} parameter too, or drop it from the override"
            )
        return tree

    def _model(self, tree: _Tree) -> CallModel:
        """fast-depends' model of the dependencies, as the root of a call that collects them."""
        provider = Provider()
        try:
            for original, replacement in tree.replaced.items():
                # As Provider.override does, but built for an async caller, as every
                # dependency is here: a plain def replacement may require async ones.
                provider.overrides[original] = build_call_model(
                    replacement, dependency_provider=provider, is_sync=False, serializer_cls=None
                )
            model = build_call_model(
                _collector(self.parameters), dependency_provider=provider, serializer_cls=None
            )
        except (AssertionError, NameError, TypeError, ValueError) as exc:
            raise HandlerSignatureError(
                f"handler {self.handler}: its dependencies cannot be resolved ({exc})"
            ) from exc
        self._agree(model, tree)
        return model

    def _agree(self, model: CallModel, tree: _Tree) -> None:
        """Raise if fast-depends sees fewer ``Depends`` than the walk did.

        It resolves string annotations (``from __future__ import annotations``)
        in a function's module only (a class is handed over as a function);
        those of a callable object it may not resolve, and would call it
        without them.
        """
        get = model.dependency_provider.get_dependant
        models, visited = [model], set()
        found: set[tuple[int, str]] = set()
        while models:
            for key in models.pop().dependencies.values():
                solved = get(key)
                if id(solved) not in visited:
                    visited.add(id(solved))
                    found.update((id(solved.call), name) for name in solved.dependencies)
                    models.append(solved)
        for call, name in tree.requires:
            if (id(tree.made.get(id(call), call)), name) not in found:
                raise HandlerSignatureError(
                    f"handler {self.handler}: the resolver cannot read the Depends of "
                    f"parameter {name!r} of {_named(call)}, a callable object whose annotations "
                    "are strings (from __future__ import annotations); provide its value with "
                    "a function instead, e.g. `async def get_x(...) -> X: return await x(...)`"
                )


def _constructor(cls: type, where: str) -> Callable[..., Any]:
    """A function making a ``cls`` from keyword arguments, with its evaluated signature.

    fast-depends resolves string annotations in the module of a function only,
    not in that of a class's ``__init__``; this function carries them resolved.
    """

    def construct(**values: Any) -> Any:
        return cls(**values)

    construct.__signature__ = inspect.Signature(_parameters(cls, where))  # type: ignore[attr-defined]
    construct.__qualname__ = construct.__name__ = cls.__qualname__
    return construct


def _filled(source: Source, message: Message, settings: Settings | None) -> Any:
    if source is _MESSAGE:
        return message
    if source is _SETTINGS:
        return settings
    assert isinstance(source, type)
    return source.current()


def _collector(parameters: tuple[inspect.Parameter, ...]) -> Callable[..., Any]:
    """An ``async def`` taking ``parameters`` by keyword and returning them as a dict.

    fast-depends resolves a call's parameters; this call's are the handler's
    dependency parameters alone, so the runtime keeps calling the handler.
    """

    async def collect(**values: Any) -> dict[str, Any]:
        return values

    collect.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p.replace(kind=p.KEYWORD_ONLY) for p in parameters]
    )
    return collect
