"""Readiness facts written by the loop and read by `/readyz` (plain attributes: single writes
and reads are atomic, no lock needed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["Health"]


class Health:
    """Is the observer attached (Kafka, Redis) and is its loop turning?"""

    def __init__(
        self, stall_after_ms: int = 30_000, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._mono = monotonic
        self.stall_after_s = stall_after_ms / 1000.0
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
        ready = self.started and not self.stopping and self.kafka_ok and self.redis_ok and loop_ok
        return {
            "ready": ready,
            "kafka": self.kafka_ok,
            "redis": self.redis_ok,
            "redis_error": self.redis_error,
            "loop": loop_ok,
            "loop_idle_s": None if self.loop_at is None else round(now - self.loop_at, 3),
            "started": self.started,
            "stopping": self.stopping,
            "watermark": self.watermark,
        }
