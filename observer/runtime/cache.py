"""Decoded slots this process wrote recently, so a busy key is not loaded and decoded again
for every batch. Pure: an LRU over slot ids.

Only valid while this process is the only writer of the slots it caches: the runtime clears it
on any store failure (the store may not hold what the cache does) and on every rebalance.
"""

from __future__ import annotations

from collections import OrderedDict

from observer.engine.state import KeySlot

__all__ = ["SlotCache"]


class SlotCache:
    """At most `capacity` slots with the bytes last written for each (0 disables the cache)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[KeySlot, bytes]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, sid: str) -> tuple[KeySlot, bytes] | None:
        item = self._items.get(sid)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(sid)
        self.hits += 1
        return item

    def put(self, sid: str, slot: KeySlot, stored: bytes) -> None:
        """`slot` is the state `stored` decodes to (the bytes written to the store)."""
        if self.capacity <= 0:
            return
        items = self._items
        if sid in items:
            items.move_to_end(sid)
        items[sid] = (slot, stored)
        if len(items) > self.capacity:
            items.popitem(last=False)

    def drop(self, sid: str) -> None:
        self._items.pop(sid, None)

    def clear(self) -> None:
        self._items.clear()
