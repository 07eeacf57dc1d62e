"""`StoreOutage`: what the loop does each time the state store fails, whatever it was doing.

It says so (`/readyz` reports the error, `observer_store_errors_total` counts it, a log line
names what failed) and waits before the next attempt, twice as long each time up to 5 s, less
if the observer is stopping. What to try again is the caller's business (`tracker.py` reads the
owned partitions again; start-up and the lease retry their request).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from observer.errors import StoreError
from observer.metrics import Metrics
from observer.runtime.backoff import Backoff
from observer.runtime.health import Health
from observer.runtime.ports import Clock

__all__ = ["StoreOutage"]

log = logging.getLogger(__name__)


class StoreOutage:
    """Reports store failures and paces the attempts after them; `ok()` once one succeeded."""

    def __init__(
        self, health: Health, metrics: Metrics, clock: Clock, stop: threading.Event
    ) -> None:
        self.health = health
        self.metrics = metrics
        self.clock = clock
        self.stop = stop
        self.backoff = Backoff(0.1, 5.0)
        self.waiting = False  # `begin`: down, and the caller retries at `retry_at`
        self.retry_at = 0.0

    def failed(self, exc: Exception, doing: str) -> None:
        """The store failed while `doing`: report it, then wait before the next attempt."""
        self.clock.sleep(self.report(exc, doing), self.stop)

    def report(self, exc: Exception, doing: str) -> float:
        """The store failed while `doing`: report it; returns how long to wait before the next
        attempt (for a caller that has other work meanwhile: the tracker serves its consumer)."""
        self.health.redis_ok = False
        self.health.redis_error = str(exc)
        self.metrics.store_errors.inc()
        delay = self.backoff.next()
        log.error("state store failed while %s: %s; retrying in %.1fs", doing, exc, delay)
        return delay

    def begin(self, exc: Exception, doing: str) -> None:
        """The store failed, for a caller with other work while it is down (the tracker
        serves its consumer): report it and say when to try again (`due`), without waiting."""
        self.waiting = True
        self.retry_at = self.clock.monotonic() + self.report(exc, doing)

    def wait_s(self, timeout_s: float) -> float:
        """How long the caller may wait now: `timeout_s`, or less when the next try is due."""
        return max(0.0, min(timeout_s, self.retry_at - self.clock.monotonic()))

    def due(self) -> bool:
        """Time to try the store again (after `begin`)."""
        return self.waiting and self.clock.monotonic() >= self.retry_at

    def retry(self, attempt: Callable[[], None], *, failed: Callable[[], None]) -> None:
        """When `due` (and not stopping): `attempt` to use the store again; a StoreError
        calls `failed` and schedules the next try."""
        if not self.due() or self.stop.is_set():
            return
        try:
            attempt()
        except StoreError as again:
            failed()
            self.begin(again, "reconnecting")
            return
        self.ok()
        log.info("state store is back; reading again from the committed offsets")

    def ok(self) -> None:
        """The store answered."""
        self.waiting = False
        self.health.redis_ok = True
        self.health.redis_error = None
        self.backoff.reset()
