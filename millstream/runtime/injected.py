"""``Injected``: the seam through which layers above the runtime fill handler parameters."""

from __future__ import annotations

from typing import Self

__all__ = ["Injected"]


class Injected:
    """A handler parameter type the runtime fills from context, not from the message.

    The seam through which layers above the runtime hand a handler what it
    needs: the store's ``Transaction`` subclasses it, and a handler taking a
    ``tx: Transaction`` gets ``Transaction.current()`` on each call, in the
    context its consumer's links set up. Only an ``async def`` handler may
    take one (what it gives is used with ``await``); so may an ``async def``
    dependency of any handler.
    """

    __slots__ = ()

    @classmethod
    def current(cls) -> Self:
        """The instance for the handler running now; raises if there is none."""
        raise NotImplementedError
