"""`DueBounds`: per owned shard, a time before which nothing in its due index can be due.

The tracker that owns a shard is the only writer of its due index, so it can know, without
asking the store, that a tick would find nothing: every due time the index holds is at or
after the shard's bound. A bound is

- unknown until learnt: a shard just assigned, every shard after the store failed (a lost
  write may have left an earlier due time than the bound assumed), and every shard every
  `RELEARN_S` (a safety net for writers this process does not know of);
- learnt from a tick's read of the shard's due slots (`DueSlots.later`): the earliest due time
  left after the watermark, the slots read not counted (the tick's write reschedules them);
- lowered by every write this process sends, before it is sent, to the due times it sets.

A tick reads only the shards whose watermark reached their bound (`to_read`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from observer.runtime.ports import SlotPut

__all__ = ["RELEARN_S", "DueBounds"]

# Every this many seconds every bound is learnt again from a read.
RELEARN_S = 10.0

_NEVER = 1 << 62  # the bound of a shard whose index holds no due time


class DueBounds:
    """The bounds of the owned shards. Owned by the loop's thread."""

    __slots__ = ("_learnt_at", "_low", "_mono")

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._low: dict[int, int] = {}  # shard -> bound (a shard not in it: unknown)
        self._learnt_at: dict[int, float] = {}
        self._mono = monotonic

    def to_read(self, marks: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """The (shard, watermark) pairs a tick must read: the watermark reached the bound,
        or the bound is unknown or old."""
        low = self._low
        out = [(s, wm) for s, wm in marks if wm >= low.get(s, wm)]
        if len(out) < len(marks):
            stale = self._mono() - RELEARN_S
            learnt = self._learnt_at
            out = [(s, wm) for s, wm in marks if wm >= low.get(s, wm) or learnt[s] < stale]
        return out

    def learn(self, later: Mapping[int, int | None]) -> None:
        """A read returned every due slot of these shards: `later[s]` is the earliest due time
        left after the watermark in shard s's index (None: none)."""
        now = self._mono()
        for s, t in later.items():
            self._low[s] = _NEVER if t is None else t
            self._learnt_at[s] = now

    def lower(self, puts: Iterable[SlotPut]) -> None:
        """A write is about to be sent: the due times it sets."""
        low = self._low
        for p in puts:
            due = p.due
            if due is not None:
                s = p.shard
                b = low.get(s)
                if b is not None and due < b:
                    low[s] = due

    def forget(self, shards: Iterable[int] | None = None) -> None:
        """These shards' bounds (None: every shard's) are no longer known."""
        if shards is None:
            self._low.clear()
            self._learnt_at.clear()
            return
        for s in shards:
            self._low.pop(s, None)
            self._learnt_at.pop(s, None)

    def bound(self, shard: int) -> int | None:
        """The shard's bound (None: unknown); for tests and the ops view."""
        return self._low.get(shard)
