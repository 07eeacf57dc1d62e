"""Retry delays: doubling from a first delay up to a cap. The one backoff rule of the runtime
(outbox records the broker did not take, a failing state store, start-up preparation); the
webhook workers use the same formula (`backoff_ms`)."""

from __future__ import annotations

__all__ = ["Backoff", "backoff_ms"]


def backoff_ms(attempt: int, base_ms: int, cap_ms: int) -> int:
    """Delay before retry number `attempt` (1 = the first retry): base * 2^(attempt-1), capped."""
    return int(min(cap_ms, base_ms * 2 ** max(0, attempt - 1)))


class Backoff:
    """Successive waits between attempts of one thing: `first_s`, then doubling up to `cap_s`;
    `reset()` after a success starts again from `first_s`."""

    __slots__ = ("_delay", "cap_s", "first_s")

    def __init__(self, first_s: float, cap_s: float) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self._delay = first_s

    @property
    def delay_s(self) -> float:
        """The wait before the next attempt."""
        return self._delay

    def next(self) -> float:
        """The wait before the next attempt; the one after is twice as long (capped)."""
        delay = self._delay
        self._delay = min(delay * 2, self.cap_s)
        return delay

    def reset(self) -> None:
        self._delay = self.first_s
