"""`InMemoryLease`: the `Lease` port; several of them sharing one `LeaseTable` contend like
processes sharing a Redis prefix. Expiry follows the table's clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from observer.errors import StoreError

__all__ = ["InMemoryLease", "LeaseTable"]


@dataclass(slots=True)
class LeaseTable:
    """Who holds the lease, and until when (seconds of `monotonic`). `available` False: every
    request fails with StoreError, as when Redis is down."""

    monotonic: Callable[[], float]
    holder: str | None = None
    until: float = 0.0
    available: bool = True
    log: list[tuple[str, str]] = field(default_factory=list)  # (owner, what) of every change

    def current(self) -> str | None:
        if self.holder is not None and self.monotonic() >= self.until:
            self.holder = None
        return self.holder


class InMemoryLease:
    """The lease of `table`, held as `owner` for `ttl_ms` at a time."""

    def __init__(self, table: LeaseTable, owner: str, ttl_ms: int) -> None:
        self.table = table
        self.owner = owner
        self.ttl_ms = ttl_ms

    def _check(self) -> None:
        if not self.table.available:
            raise StoreError("the in-memory lease table is unavailable")

    def acquire(self) -> str | None:
        self._check()
        t = self.table
        holder = t.current()
        if holder is not None and holder != self.owner:
            return holder
        t.holder, t.until = self.owner, t.monotonic() + self.ttl_ms / 1000.0
        t.log.append((self.owner, "acquired"))
        return None

    def renew(self) -> bool:
        self._check()
        t = self.table
        if t.current() != self.owner:
            return False
        t.until = t.monotonic() + self.ttl_ms / 1000.0
        return True

    def release(self) -> None:
        self._check()
        t = self.table
        if t.current() == self.owner:
            t.holder = None
            t.log.append((self.owner, "released"))
