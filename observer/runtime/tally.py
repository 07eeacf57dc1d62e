"""`MinuteTally`: the correlation-health counts of one process, per wall-clock minute, until
they are flushed to the store every few seconds (`Runtime`; `adapters/redis/tally.py` adds
them to one hash per minute that every process of the group adds to).

Counts (`observer/correlation.py`) come from the router (records read, ignored, dead letters,
events without key, type or time) and from the tracker once a batch's write returned (what
became of each event, steps observed, deviations). A minute is the one of the process's clock
when they were counted (not event time): "in the last hour" is what the observer saw in it.
A flush that fails puts its counts back; what is held while the store is down is bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from observer.correlation import Count
from observer.errors import StoreError
from observer.runtime.every import Every
from observer.runtime.ports import TallySink

__all__ = ["MINUTE_MS", "MinuteCounts", "MinuteTally"]

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
FLUSH_EVERY_S = 5.0
_MAX_MINUTES = 120  # held while the store is down; older minutes are dropped first

MinuteCounts = dict[int, dict[Count, int]]  # epoch minute -> count -> n


class MinuteTally:
    """Counts added per minute of `now_ms()`; flushed to `sink` every few seconds of
    `monotonic()` (`take` hands them over; None: counted, never kept)."""

    def __init__(
        self,
        now_ms: Callable[[], int],
        sink: TallySink | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._now_ms = now_ms
        self._minutes: MinuteCounts = {}
        self.dropped = 0  # counts given up because the store stayed down too long
        self._sink = sink
        self._every = None if monotonic is None else Every(FLUSH_EVERY_S, monotonic)

    def flush_when_due(self) -> None:
        if self._every is not None and self._every.due():
            self.flush()

    def flush(self) -> None:
        """Add the counts to the sink (the store's per-minute hashes); on failure they are
        kept (bounded) for the next flush."""
        taken = self.take()
        if self._sink is None or not taken:
            return
        try:
            self._sink.add(taken)
        except StoreError as exc:
            self.restore(taken)
            log.warning("correlation counts not stored yet (kept for the next try): %s", exc)

    def add(self, counts: Mapping[Count, int]) -> None:
        if not counts:
            return
        minute = self._now_ms() // MINUTE_MS
        into = self._minutes.get(minute)
        if into is None:
            into = self._minutes[minute] = {}
            self._bound()
        get = into.get
        for count, n in counts.items():
            into[count] = get(count, 0) + n

    def take(self) -> MinuteCounts:
        """Everything counted since the last `take` (and not put back)."""
        taken, self._minutes = self._minutes, {}
        return taken

    def restore(self, taken: MinuteCounts) -> None:
        """Put back counts whose flush failed (they go with the next one)."""
        for minute, counts in taken.items():
            into = self._minutes.setdefault(minute, {})
            for count, n in counts.items():
                into[count] = into.get(count, 0) + n
        self._bound()

    def __bool__(self) -> bool:
        return bool(self._minutes)

    def _bound(self) -> None:
        while len(self._minutes) > _MAX_MINUTES:
            oldest = min(self._minutes)
            self.dropped += sum(self._minutes.pop(oldest).values())
