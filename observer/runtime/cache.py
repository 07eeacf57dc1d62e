"""Decoded slots this process wrote recently, so a busy key is not loaded and decoded again
for every batch. Pure: an LRU over slot ids, bounded by a count and by the stored bytes of its
slots (a few huge slots must not fill the memory a hundred thousand small ones may take). It
also remembers slots it knows hold nothing (deleted, or looked up and absent): an event of such
a key needs no load either.

Only valid while this process is the only writer of the slots it caches: the tracker clears it
on any store failure (the store may not hold what the cache does) and on every rebalance.
"""

from __future__ import annotations

from collections import OrderedDict

from observer.engine.state import KeySlot

__all__ = ["ABSENT", "SlotCache"]

ABSENT = (None, None)  # `get`: the store holds nothing for this slot
_ENTRY_BYTES = 200  # what an entry costs besides its stored bytes (ids, the ordered dict)


class SlotCache:
    """At most `capacity` slots (0 disables the cache) whose stored bytes (plus a little per
    entry) make up at most `max_bytes`; the least recently used go first."""

    def __init__(self, capacity: int, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0  # what the entries held count, as `_size` counts it
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
        both: the store holds nothing for it. A slot larger than a tenth of the byte budget is
        not kept (it is loaded again when needed)."""
        if self.capacity <= 0:
            return
        items = self._items
        old = items.pop(sid, None)
        if old is not None:
            self.bytes -= _size(sid, old[1])
        if slot is None or stored is None:
            items[sid] = ABSENT
            size = _ENTRY_BYTES + len(sid)
        else:
            size = _ENTRY_BYTES + len(sid) + len(stored)
            if size * 10 > self.max_bytes:
                return
            items[sid] = (slot, stored)
        self.bytes += size
        while len(items) > self.capacity or (self.bytes > self.max_bytes and items):
            gone, (_slot, gone_bytes) = items.popitem(last=False)
            self.bytes -= _size(gone, gone_bytes)

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


def _size(sid: str, stored: bytes | None) -> int:
    return _ENTRY_BYTES + len(sid) + (0 if stored is None else len(stored))
