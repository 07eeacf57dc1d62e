"""`SystemClock`: the real clocks behind the runtime's `Clock` port (the only place in the
runtime's reach that reads `time`)."""

from __future__ import annotations

import threading
import time

__all__ = ["SystemClock"]


class SystemClock:
    """The wall clock, the monotonic clock, and waiting that a `threading.Event` can cut short."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, wake: threading.Event | None = None) -> bool:
        if wake is not None:
            return wake.wait(max(0.0, seconds))
        if seconds > 0:
            time.sleep(seconds)
        return False
