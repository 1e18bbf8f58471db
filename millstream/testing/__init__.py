"""Testing a millstream service: ``async with TestApp(ms) as t``, then publish, drain, assert.

The app runs unchanged on the memory broker (whose retries wait on a clock
the harness moves) and a throw-away store; ``t.drain()`` returns once
nothing is left in flight, ready or due; ``t.handled``, ``t.calls``,
``t.published``, ``t.dead_letters`` and ``t.stats`` say what happened.
The pytest plugin (``millstream.testing.plugin``, loaded by entry point)
adds the ``millstream_test`` fixture. See ``docs/testing.md``.
"""

from __future__ import annotations

from millstream.testing.clock import ManualClock
from millstream.testing.drain import DrainTimeout
from millstream.testing.harness import TestApp
from millstream.testing.recorder import Published

__all__ = ["DrainTimeout", "ManualClock", "Published", "TestApp"]
