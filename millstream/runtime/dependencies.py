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
HTTP; FastStream's resolver); the runtime keeps calling the handler itself.
What millstream adds are the checks up front (``providers.py``): a
signature nothing can fill fails when the consumer is declared, naming the
provider and the parameter, not at the first message.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from fast_depends import Provider
from fast_depends.core import CallModel, build_call_model
from fast_depends.dependencies import Dependant

from millstream.errors import HandlerSignatureError
from millstream.message import Message
from millstream.runtime.injected import Injected
from millstream.runtime.providers import (
    MESSAGE,
    SETTINGS,
    Overrides,
    Source,
    Tree,
    dependant_of,
    named,
)
from millstream.settings import Settings

__all__ = ["Dependencies", "Depends", "Overrides", "dependant_of"]

Call = Callable[[Message, dict[str, Any]], Awaitable[None]]
"""A call of the handler with the message and its dependency parameters' values, by name."""


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
        if settings is None and SETTINGS in tree.context.values():
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

    def _walk(self, overrides: Overrides) -> Tree:
        tree = Tree(self.handler, overrides)
        where = f"handler {self.handler}"
        for parameter in self.parameters:
            mark = dependant_of(parameter.annotation, parameter.default, where)
            assert mark is not None
            tree.require(parameter.name, mark, where, ())
        added = tree.injected - self._declared.injected if overrides else frozenset()
        if added:
            kind = next(iter(added)).__name__
            raise HandlerSignatureError(
                f"handler {self.handler}: an override in dependency_overrides takes a {kind} "
                f"its original does not, and the consumer was declared without one; give the "
                f"original dependency the {kind} parameter too, or drop it from the override"
            )
        return tree

    def _model(self, tree: Tree) -> CallModel:
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

    def _agree(self, model: CallModel, tree: Tree) -> None:
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
                    f"parameter {name!r} of {named(call)}, a callable object whose annotations "
                    "are strings (from __future__ import annotations); provide its value with "
                    "a function instead, e.g. `async def get_x(...) -> X: return await x(...)`"
                )


def _filled(source: Source, message: Message, settings: Settings | None) -> Any:
    if source is MESSAGE:
        return message
    if source is SETTINGS:
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
