"""How far the assigned partitions of a consumer were read. Pure: no I/O, no clock.

`ReadProgress` keeps, per assigned partition, the position and the log's start and end offsets
the client reports: how many records are left to read (the lag). Both stages keep one.

`Watermarks` adds event time, for the router's source partitions: a partition's watermark is
the timestamp of the last record read (never moving backwards); a partition whose position
has reached its high-water mark (fully read) counts as being at the wall clock, less
`idle_grace_ms` (records produced a moment ago may still be on their way to the broker); it is
unknown (None) while a partition has neither been read from nor is known to be fully read.
The router sends these to every shard in marks; a shard's watermark, the minimum over every
source partition, is `keyed.ShardWatermarks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["PartitionState", "ReadProgress", "TopicPartition", "Watermarks"]

TopicPartition = tuple[str, int]


@dataclass(slots=True)
class PartitionState:
    """What is known about one assigned partition. Offsets are Kafka offsets, times epoch ms."""

    last_ts: int | None = None  # largest record timestamp read
    position: int | None = None  # next offset to read (None: not known yet)
    low: int | None = None  # log start offset (None: not fetched yet)
    high: int | None = None  # high-water mark (None: not fetched yet)
    watermark: int | None = None  # monotonic

    def fully_read(self) -> bool:
        if self.high is None:
            return False
        if self.position is not None:
            return self.position >= self.high
        return self.low is not None and self.low >= self.high  # nothing to read at all

    def lag(self) -> int | None:
        if self.high is None:
            return None
        start = self.position if self.position is not None else self.low
        return None if start is None else max(0, self.high - start)


class ReadProgress:
    """Per assigned partition: position, log start and end offsets, and so the lag."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, PartitionState] = {}

    @property
    def partitions(self) -> Mapping[TopicPartition, PartitionState]:
        return self._parts

    def assign(
        self, tps: Iterable[TopicPartition], positions: Mapping[TopicPartition, int] | None = None
    ) -> None:
        """Partitions added to the assignment; `positions`: their committed offsets, if any."""
        for tp in tps:
            st = self._parts.setdefault(tp, PartitionState())
            pos = (positions or {}).get(tp)
            if pos is not None and pos >= 0:
                st.position = pos

    def revoke(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._parts.pop(tp, None)

    def observe(self, topic: str, partition: int, offset: int, timestamp: int) -> None:
        """A record was read. Records of partitions not assigned are ignored."""
        st = self._parts.get((topic, partition))
        if st is None:
            return
        if st.position is None or offset + 1 > st.position:
            st.position = offset + 1
        if timestamp >= 0 and (st.last_ts is None or timestamp > st.last_ts):
            st.last_ts = timestamp

    def offsets(
        self, tp: TopicPartition, low: int | None, high: int | None, position: int | None
    ) -> None:
        """Offsets reported by the client (negative values mean unknown and are ignored)."""
        st = self._parts.get(tp)
        if st is None:
            return
        if low is not None and low >= 0:
            st.low = low
        if high is not None and high >= 0:
            st.high = high
        if (
            position is not None
            and position >= 0
            and (st.position is None or position > st.position)
        ):
            st.position = position

    def lag(self) -> int:
        """Records not read yet on the assigned partitions (as last reported; unknown as 0)."""
        return sum(st.lag() or 0 for st in self._parts.values())


class Watermarks(ReadProgress):
    """`ReadProgress` with each partition's watermark (epoch ms)."""

    def __init__(self, idle_grace_ms: int = 0) -> None:
        super().__init__()
        self.idle_grace_ms = idle_grace_ms

    def partition_watermark(self, tp: TopicPartition, now: int) -> int | None:
        """The partition's watermark at wall-clock `now`, advanced monotonically."""
        st = self._parts.get(tp)
        if st is None:
            return None
        candidate = st.last_ts
        if st.fully_read():
            idle = now - self.idle_grace_ms
            candidate = idle if candidate is None else max(candidate, idle)
        if candidate is not None and (st.watermark is None or candidate > st.watermark):
            st.watermark = candidate
        return st.watermark
