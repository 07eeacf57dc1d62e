"""`InMemoryConsoleStore`: the web console's `ConsoleStore` port over the in-memory state store
and tally (what `adapters/redis/console.py` reads from Redis), for tests."""

from __future__ import annotations

from collections.abc import Iterator

from observer.adapters.memory.store import InMemoryStateStore
from observer.adapters.memory.tally import InMemoryTally
from observer.runtime.shards import split_slot_id

__all__ = ["InMemoryConsoleStore"]

Count = tuple[str, str, str, str]
_MINUTES_A_DAY = 24 * 60


class InMemoryConsoleStore:
    """`counts` says how many times the flows' slots were read (one count of the group)."""

    def __init__(self, store: InMemoryStateStore, tally: InMemoryTally) -> None:
        self.store = store
        self.tally_sink = tally
        self.cache: dict[str, bytes] = {}
        self.claimed: set[str] = set()
        self.counts = 0

    def tally(self, first: int, last: int) -> dict[int, dict[Count, int]]:
        return self.tally_sink.read(first, last)

    def slo_days(self, first: int, last: int) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for minute, per in self.tally_sink.minutes.items():
            if first <= minute // _MINUTES_A_DAY <= last:
                for (scope, flow, result, _), n in per.items():
                    if scope == "slo":
                        row = out.setdefault(flow, {"good": 0, "bad": 0})
                        row[result] = row.get(result, 0) + n
        return out

    def open_counts(self) -> dict[str, int]:
        return {k[5:]: v for k, v in self.store.stats().items() if k.startswith("open:")}

    def slots(self, flow: str, limit: int) -> Iterator[tuple[str, bytes]]:
        self.counts += 1
        given = 0
        for sid, state in sorted(self.store.slot_states()):
            name, key = split_slot_id(sid)
            if name == flow and given < limit:
                given += 1
                yield key, state

    def cached_waiting(self, flow: str) -> bytes | None:
        return self.cache.get(flow)

    def store_waiting(self, flow: str, data: bytes, ttl_ms: int) -> None:
        self.cache[flow] = data

    def claim_count(self, flow: str, ttl_ms: int) -> bool:
        """Claimed once until `release` (a test's stand-in for the claim's expiry)."""
        if flow in self.claimed:
            return False
        self.claimed.add(flow)
        return True

    def release(self, flow: str) -> None:
        self.claimed.discard(flow)
