"""``ManualClock``: a clock that moves only when told to, for the memory broker in tests."""

from __future__ import annotations

__all__ = ["ManualClock"]


class ManualClock:
    """Seconds that pass only by ``advance``: give it to ``MemoryHub(clock=...)``.

    Leases and retry delays on that hub are measured on it, so a retry
    30 s away is due as soon as the clock is moved 30 s on, whatever the
    wall clock says. It starts at 0 and never goes back.
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on."""
        if seconds < 0:
            raise ValueError(f"a clock moves forward only; advance({seconds}) would go back")
        self._now += seconds

    def advance_to(self, when: float) -> None:
        """Move the clock on to ``when``; a time already passed leaves it where it is."""
        self._now = max(self._now, when)

    def __repr__(self) -> str:
        return f"ManualClock({self._now})"
