"""The app layer: consumers registered, their links assembled, state opened and closed, publishing.

:class:`App` (``lifecycle.py``) ties the parts: the :class:`Registry` of
consumers and handler links (``registry.py``), the :class:`Publisher` and
its chain (``publisher.py``) and the :class:`State`: store, outbox relay and
caches (``state.py``). A :class:`Router` (``router.py``) declares consumers
and publishers apart from any app; what an app publishes is declared in
``publications.py``. It knows no face: ``millstream.Millstream``
(``millstream/service.py``) is this app with its HTTP face.
"""

from __future__ import annotations

from millstream.app.lifecycle import App
from millstream.app.publications import Publication, TopicPublisher
from millstream.app.publisher import Publisher
from millstream.app.registry import Registry
from millstream.app.router import Router
from millstream.app.state import State

__all__ = ["App", "Publication", "Publisher", "Registry", "Router", "State", "TopicPublisher"]
