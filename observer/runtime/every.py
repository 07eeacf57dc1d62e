"""`Every`: something the loop does every so many seconds, checked once per turn of the loop."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Every"]


class Every:
    """`due()` is True at most once every `interval_s` seconds of `monotonic` (the first call
    is due at once). Not a thread: the loop asks, and acts when told."""

    __slots__ = ("_mono", "_next", "interval_s")

    def __init__(self, interval_s: float, monotonic: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self._mono = monotonic
        self._next = float("-inf")

    def due(self) -> bool:
        """True if the interval has passed since it was last due (and starts the next one)."""
        now = self._mono()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        return True

    def restart(self) -> None:
        """It was just done for another reason: the next time is a whole interval away."""
        self._next = self._mono() + self.interval_s

    def hurry(self) -> None:
        """Due again at the next `due()`."""
        self._next = float("-inf")
