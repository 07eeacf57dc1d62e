"""`ManualClock`: time that moves only when a test moves it (or when the runtime sleeps)."""

from __future__ import annotations

import threading

__all__ = ["ManualClock"]


class ManualClock:
    """The runtime's `Clock` on a virtual time line: the wall clock (epoch ms) and the monotonic
    clock move together, by `advance` or by `sleep` (which returns at once: the wait passes
    instantly, unless `wake` is already set)."""

    def __init__(self, now_ms: int = 1_767_225_600_000) -> None:
        self._now_ms = float(now_ms)
        self._mono = 0.0
        self.slept = 0.0  # seconds passed in `sleep`, in total

    def now_ms(self) -> int:
        return int(self._now_ms)

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        if seconds < 0:
            raise ValueError("time does not go back")
        self._mono += seconds
        self._now_ms += seconds * 1000.0

    def sleep(self, seconds: float, wake: threading.Event | None = None) -> bool:
        if wake is not None and wake.is_set():
            return True
        seconds = max(0.0, seconds)
        self.slept += seconds
        self.advance(seconds)
        return wake is not None and wake.is_set()
