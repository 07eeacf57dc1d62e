"""`LeaseGuard`: `routing: direct` runs one process per key prefix, and this keeps it so.

Before the loop starts, `take` waits (as a standby, not ready) until this process holds the
lease; while it runs, `renew` extends it every third of its TTL and stops the process if
someone else holds it now (this one was stalled for longer than the TTL); `release` hands it
over at once on a clean stop.
"""

from __future__ import annotations

import logging
import threading

from observer.errors import ObserverError, StoreError
from observer.runtime.every import Every
from observer.runtime.outage import StoreOutage
from observer.runtime.ports import Clock, Lease

__all__ = ["LeaseGuard"]

log = logging.getLogger(__name__)

_STANDBY_LOG_EVERY_S = 60.0


class LeaseGuard:
    """The lease of key prefix `prefix`, held for `ttl_ms` at a time."""

    def __init__(
        self,
        lease: Lease,
        prefix: str,
        ttl_ms: int,
        *,
        clock: Clock,
        stop: threading.Event,
        outage: StoreOutage,
    ) -> None:
        self.lease = lease
        self.prefix = prefix
        self.ttl_ms = ttl_ms
        self.clock = clock
        self.stop = stop
        self.outage = outage
        self._renew_every = Every(ttl_ms / 3000.0, clock.monotonic)
        self.held = False

    def take(self) -> bool:
        """Wait until this process holds the lease; False if stopped first."""
        standby_log = Every(_STANDBY_LOG_EVERY_S, self.clock.monotonic)
        while not self.stop.is_set():
            try:
                holder = self.lease.acquire()
            except StoreError as exc:
                self.outage.failed(exc, "taking the lease of direct routing")
                continue
            if holder is None:
                self.held = True
                self._renew_every.restart()
                log.info("direct routing: this process holds the lease of prefix %s", self.prefix)
                return True
            if standby_log.due():
                log.warning(
                    "direct routing runs one process per prefix and %s holds it; waiting as a "
                    "standby (to run several processes at once, use OBSERVER_ROUTING=keyed)",
                    holder,
                )
            self.clock.sleep(min(1.0, self.ttl_ms / 10000.0), self.stop)
        return False

    def renew(self) -> None:
        """Extend the lease when a third of its TTL has passed. Raises ObserverError if another
        process holds it now; a store failure is only logged (the lease outlives a few)."""
        if not self._renew_every.due():
            return
        try:
            held = self.lease.renew()
        except StoreError as exc:
            log.warning("direct routing: %s (kept; retrying)", exc)
            return
        if not held:
            raise ObserverError(
                f"direct routing: the lease of prefix {self.prefix} was lost to another process "
                "(this one was stalled for longer than OBSERVER_LEASE_TTL_MS); stopping"
            )

    def release(self) -> None:
        """Let a standby take over at once (if this process held the lease)."""
        if not self.held:
            return
        self.held = False
        try:
            self.lease.release()
        except StoreError as exc:
            log.warning("direct routing: %s (it expires by itself)", exc)
