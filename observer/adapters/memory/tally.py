"""`InMemoryTally`: the per-minute correlation-health counts in memory (the runtime's
`TallySink`, and what `observer health` reads, like `adapters/redis/tally.py`)."""

from __future__ import annotations

from collections.abc import Mapping

from observer.errors import StoreError

__all__ = ["InMemoryTally"]

Count = tuple[str, str, str, str]


class InMemoryTally:
    """Counts per epoch minute; `fail` makes `add` raise StoreError (a store that is down)."""

    def __init__(self) -> None:
        self.minutes: dict[int, dict[Count, int]] = {}
        self.fail = False

    def add(self, counts: Mapping[int, Mapping[Count, int]]) -> None:
        if self.fail:
            raise StoreError("the store is down (test)")
        for minute, per in counts.items():
            into = self.minutes.setdefault(minute, {})
            for count, n in per.items():
                into[count] = into.get(count, 0) + n

    def read(self, first: int, last: int) -> dict[int, dict[Count, int]]:
        return {m: dict(c) for m, c in self.minutes.items() if first <= m <= last and c}

    def totals(self) -> dict[Count, int]:
        """Every minute added up."""
        out: dict[Count, int] = {}
        for per in self.minutes.values():
            for count, n in per.items():
                out[count] = out.get(count, 0) + n
        return out

    def close(self) -> None:
        pass
