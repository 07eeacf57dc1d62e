"""`StoreOutage`: what the loop does each time the state store fails, whatever it was doing.

It says so (`/readyz` reports the error, `observer_store_errors_total` counts it, a log line
names what failed) and waits before the next attempt, twice as long each time up to 5 s, less
if the observer is stopping. What to try again is the caller's business (`tracker.py` reads the
owned partitions again; start-up and the lease retry their request).
"""

from __future__ import annotations

import logging
import threading

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

    def failed(self, exc: Exception, doing: str) -> None:
        """The store failed while `doing`: report it, then wait before the next attempt."""
        self.health.redis_ok = False
        self.health.redis_error = str(exc)
        self.metrics.store_errors.inc()
        delay = self.backoff.next()
        log.error("state store failed while %s: %s; retrying in %.1fs", doing, exc, delay)
        self.clock.sleep(delay, self.stop)

    def ok(self) -> None:
        """The store answered."""
        self.health.redis_ok = True
        self.health.redis_error = None
        self.backoff.reset()
