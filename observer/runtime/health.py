"""Readiness facts written by the loop and read by `/readyz` (plain attributes: single writes
and reads are atomic, no lock needed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Health"]


class Health:
    """Is the observer attached (Kafka, Redis), is its loop turning, and is it keeping up
    (deadlines not overdue by more than `max_overdue_ms`, fewer than `max_lag_records` records
    unread; 0 turns a check off)?"""

    def __init__(
        self,
        monotonic: Callable[[], float],
        *,
        stall_after_ms: int = 30_000,
        max_overdue_ms: int = 0,
        max_lag_records: int = 0,
    ) -> None:
        """`monotonic`: seconds of the runtime clock's monotonic time (`Clock.monotonic`)."""
        self._mono = monotonic
        self.stall_after_s = stall_after_ms / 1000.0
        self.max_overdue_ms = max_overdue_ms
        self.max_lag_records = max_lag_records
        self.overdue_ms = 0  # watermark minus the earliest due time still pending
        self.lag = 0  # records not read yet (source and keyed partitions)
        self.started = False
        self.stopping = False
        self.kafka_ok = False
        self.redis_ok = False
        self.redis_error: str | None = None
        self.loop_at: float | None = None
        self.watermark: int | None = None

    def beat(self) -> None:
        """The loop completed a cycle."""
        self.loop_at = self._mono()

    def report(self) -> dict[str, Any]:
        now = self._mono()
        loop_ok = self.loop_at is not None and now - self.loop_at <= self.stall_after_s
        keeping_up = (self.max_overdue_ms == 0 or self.overdue_ms <= self.max_overdue_ms) and (
            self.max_lag_records == 0 or self.lag <= self.max_lag_records
        )
        ready = (
            self.started
            and not self.stopping
            and self.kafka_ok
            and self.redis_ok
            and loop_ok
            and keeping_up
        )
        return {
            "ready": ready,
            "keeping_up": keeping_up,
            "overdue_ms": self.overdue_ms,
            "lag": self.lag,
            "kafka": self.kafka_ok,
            "redis": self.redis_ok,
            "redis_error": self.redis_error,
            "loop": loop_ok,
            "loop_idle_s": None if self.loop_at is None else round(now - self.loop_at, 3),
            "started": self.started,
            "stopping": self.stopping,
            "watermark": self.watermark,
        }
