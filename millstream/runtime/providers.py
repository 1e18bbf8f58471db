"""The providers behind a handler's dependencies: their signatures walked and checked.

Walking a handler's dependencies (``Tree``) finds, before any message, what
fast-depends will need and what it could not do: a parameter nothing
fills, a circle, a plain ``def`` taking a ``Transaction``, a name meaning
two things in the one pool of arguments fast-depends passes by name, one
provider cached two ways. It also notes what the runtime must supply per
message: the parameters filled from context (``Message``, ``Settings``, an
``Injected`` type) and whether any provider yields.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fast_depends.dependencies import Dependant
from fast_depends.utils import is_async_gen_callable, is_coroutine_callable, is_gen_callable

from millstream.errors import HandlerSignatureError
from millstream.message import Message
from millstream.runtime.injected import Injected
from millstream.settings import Settings

__all__ = ["MESSAGE", "SETTINGS", "Overrides", "Source", "Tree", "dependant_of", "named"]

Overrides = Mapping[Callable[..., Any], Callable[..., Any]]
"""Providers replaced by others, ``{original: replacement}`` (``ms.dependency_overrides``)."""

# What a provider parameter takes from the message being handled, found by its hint.
MESSAGE, SETTINGS = "Message", "Settings"
Source = str | type[Injected]
# What a parameter name stands for in the pool of arguments: a value from context,
# a provider's result (the provider as declared), or nothing (it keeps its default).
Meaning = tuple[str, Any]
_RESULT, _CONTEXT = "result", "context"
_KEEPS_DEFAULT: Meaning = ("default", None)


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
        return MESSAGE
    if hint is Settings:
        return SETTINGS
    if isinstance(hint, type) and issubclass(hint, Injected):
        return hint
    return None


def named(call: Callable[..., Any]) -> str:
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
class Tree:
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

    def require(
        self, name: str, dependant: Dependant, where: str, path: tuple[Callable[..., Any], ...]
    ) -> None:
        """Note that parameter ``name`` (of the handler or a provider, ``where``) requires
        ``dependant``'s provider, and check that provider."""
        self.claim(name, (_RESULT, dependant.dependency), where)
        self.visit(dependant, path)

    def visit(self, dependant: Dependant, path: tuple[Callable[..., Any], ...]) -> None:
        """Check one provider and, once, everything it requires."""
        original = dependant.dependency
        if self.caching.setdefault(original, dependant.use_cache) != dependant.use_cache:
            raise HandlerSignatureError(
                f"handler {self.handler}: {named(original)} is required both cached and with "
                "use_cache=False, but a provider is cached one way for a whole handler; give "
                f"the uncached use a provider of its own (a function calling {named(original)})"
            )
        call = self.overrides.get(original, original)
        if not callable(call):
            raise HandlerSignatureError(
                f"dependency_overrides[{named(original)}] = {call!r} is not callable; "
                "map a provider to the function or class that replaces it"
            )
        if any(call is each for each in path):
            cycle = " -> ".join(named(each) for each in (*path, call))
            raise HandlerSignatureError(
                f"handler {self.handler}: its dependencies require each other in a circle "
                f"({cycle}); break the circle"
            )
        where = f"dependency {named(call)} of handler {self.handler}"
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
        here = f"{where}: parameter {parameter.name!r}"
        dependant = dependant_of(parameter.annotation, parameter.default, here)
        source = None if dependant is not None else _source(parameter.annotation)
        if parameter.kind is parameter.POSITIONAL_ONLY and (dependant or source):
            raise HandlerSignatureError(
                f"{here} is positional-only, but dependencies get their arguments by name; "
                "drop the `/` before it"
            )
        if dependant is not None:
            self.requires.append((call, parameter.name))
            self.require(parameter.name, dependant, where, path)
        elif source is not None:
            if isinstance(source, type) and not _is_async(call):
                raise HandlerSignatureError(
                    f"{here} is a {source.__name__}, but {named(call)} is a plain def; make "
                    f"it `async def`: the {source.__name__} is used with await"
                )
            self.claim(parameter.name, (_CONTEXT, source), where)
            self.context[parameter.name] = source
        elif parameter.default is parameter.empty:
            raise HandlerSignatureError(
                f"{here} cannot be filled; a dependency takes other dependencies "
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
        return f"stands for the result of {named(thing)}"
    return f"stands for the {getattr(thing, '__name__', thing)}"


def _is_async(call: Callable[..., Any]) -> bool:
    return is_coroutine_callable(call) or is_async_gen_callable(call)


def _is_generator(call: Callable[..., Any]) -> bool:
    return is_gen_callable(call) or is_async_gen_callable(call)


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
