"""Testing a millstream service: a clock the test moves, for the memory broker.

``MemoryHub(clock=ManualClock())`` measures retry delays and leases on a
clock that moves only when the test says so.
"""

from __future__ import annotations

from millstream.testing.clock import ManualClock

__all__ = ["ManualClock"]
