"""What the console reads, as ports: state every process of the group shares (Redis through
`adapters/redis/console.py`, the alerts topic through `adapters/kafka/alerts_feed.py`), so any
process serves the same console."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from observer.correlation import Count

__all__ = ["AlertFeed", "ConsoleStore"]


class ConsoleStore(Protocol):
    def tally(self, first: int, last: int) -> dict[int, dict[Count, int]]:
        """The per-minute counts of epoch minutes first..last (`P:tally:<minute>`)."""
        ...

    def slo_days(self, first: int, last: int) -> dict[str, dict[str, int]]:
        """flow -> {"good", "bad"} over epoch days first..last (`P:slo-day:<day>`)."""
        ...

    def open_counts(self) -> dict[str, int]:
        """flow -> open instances, group-wide (`P:stats`)."""
        ...

    def slots(self, flow: str, limit: int) -> Iterator[tuple[str, bytes]]:
        """(key, state) of the flow's instance slots, at most `limit` of them."""
        ...

    def cached_waiting(self, flow: str) -> bytes | None:
        """The last shared count of where the flow's instances wait (JSON), if fresh."""
        ...

    def store_waiting(self, flow: str, data: bytes, ttl_ms: int) -> None: ...

    def claim_count(self, flow: str, ttl_ms: int) -> bool:
        """Whether this process may count now (one process of the group at a time)."""
        ...


class AlertFeed(Protocol):
    def recent(self) -> list[dict[str, Any]]:
        """The latest alert records (deviations and incidents), newest first; raises
        `StoreError` when they cannot be read."""
        ...
