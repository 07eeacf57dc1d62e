"""Which offsets may be committed. Pure: no I/O.

A batch's offsets become committable only once the batch's state and outbox write returned
from the store. Commits only go forward; a failed commit makes its offsets committable again;
a revoked partition gets one last commit of what it processed, a lost one gets none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from observer.runtime.watermark import TopicPartition

__all__ = ["OffsetLedger", "next_offsets"]


def next_offsets(records: Iterable[tuple[str, int, int]]) -> dict[TopicPartition, int]:
    """The offset to commit per partition after processing (topic, partition, offset) records:
    the largest offset + 1."""
    out: dict[TopicPartition, int] = {}
    for topic, partition, offset in records:
        tp = (topic, partition)
        if offset + 1 > out.get(tp, -1):
            out[tp] = offset + 1
    return out


class OffsetLedger:
    """Processed (written) and committed offsets of the assigned partitions."""

    def __init__(self) -> None:
        self._assigned: set[TopicPartition] = set()
        self._written: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        return frozenset(self._assigned)

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._assigned.add(tp)

    def written(self, offsets: Mapping[TopicPartition, int]) -> None:
        """A batch's store write returned: its next offsets may be committed (forward only)."""
        for tp, off in offsets.items():
            if tp in self._assigned and off > self._written.get(tp, -1):
                self._written[tp] = off

    def to_commit(self, only: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Offsets written but not committed yet (optionally only for some partitions)."""
        wanted = None if only is None else set(only)
        return {
            tp: off
            for tp, off in self._written.items()
            if off > self._committed.get(tp, -1) and (wanted is None or tp in wanted)
        }

    def committing(self, offsets: Mapping[TopicPartition, int]) -> None:
        """A commit of these offsets was sent."""
        for tp, off in offsets.items():
            if off > self._committed.get(tp, -1):
                self._committed[tp] = off

    def commit_failed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """A commit failed: its offsets are committable again (unless a later one went through)."""
        for tp, off in offsets.items():
            if self._committed.get(tp) == off:
                del self._committed[tp]

    def revoke(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Partitions taken away in an orderly way: returns their last offsets to commit, then
        forgets them."""
        tps = list(tps)
        final = self.to_commit(tps)
        self.lost(tps)
        return final

    def lost(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions gone without a chance to commit: forget them."""
        for tp in tps:
            self._assigned.discard(tp)
            self._written.pop(tp, None)
            self._committed.pop(tp, None)
