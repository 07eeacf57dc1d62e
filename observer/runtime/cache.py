"""Decoded slots this process wrote recently, so a busy key is not loaded and decoded again
for every batch. Pure: an LRU over slot ids. It also remembers slots it knows hold nothing
(deleted, or looked up and absent): an event of such a key needs no load either.

Only valid while this process is the only writer of the slots it caches: the tracker clears it
on any store failure (the store may not hold what the cache does) and on every rebalance.
"""

from __future__ import annotations

from collections import OrderedDict

from observer.engine.state import KeySlot

__all__ = ["ABSENT", "SlotCache"]

ABSENT = (None, None)  # `get`: the store holds nothing for this slot


class SlotCache:
    """At most `capacity` slots with the bytes last written for each (0 disables the cache)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[KeySlot, bytes] | tuple[None, None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, sid: str) -> tuple[KeySlot, bytes] | tuple[None, None] | None:
        """The slot and its stored bytes, ABSENT if the store holds nothing, None if unknown."""
        item = self._items.get(sid)
        if item is not None:
            self._items.move_to_end(sid)
        return item

    def put(self, sid: str, slot: KeySlot | None, stored: bytes | None) -> None:
        """`slot` is the state `stored` decodes to (the bytes written to the store); None for
        both: the store holds nothing for it."""
        if self.capacity <= 0:
            return
        items = self._items
        if sid in items:
            items.move_to_end(sid)
        items[sid] = ABSENT if slot is None or stored is None else (slot, stored)
        if len(items) > self.capacity:
            items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()
