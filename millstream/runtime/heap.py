"""Keeps the cyclic garbage collector off the heap a service builds at start.

Modules, pydantic schemas, routes and connections live as long as the
process, yet every full collection walks them again: tens of milliseconds
per pause in a typical service, several times a minute under load. Freezing
what is alive once the service has started moves it out of the collector's
view (``gc.freeze``), so full collections only walk what came later; the
last running app to stop hands it back (``gc.unfreeze``).
"""

from __future__ import annotations

import gc

__all__ = ["freeze", "thaw"]

# Module state on purpose: the frozen generation belongs to the process, not to an
# app, so only a process-wide count knows when the last app using it has stopped.
_running = 0


def freeze() -> None:
    """Move everything alive now out of the collector's view, until the matching ``thaw``."""
    global _running
    _running += 1
    gc.freeze()


def thaw() -> None:
    """Undo one ``freeze``; the last one returns the frozen objects to the collector."""
    global _running
    _running = max(0, _running - 1)
    if not _running:
        gc.unfreeze()
