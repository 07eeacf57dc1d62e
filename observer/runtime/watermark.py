"""Watermarks: how far in time the observer has read its sources. Pure: no I/O, no clock.

Per assigned partition the watermark is the timestamp of the last record read (never moving
backwards). A partition whose position has reached its high-water mark (fully read) counts as
being at the wall clock, less `idle_grace_ms` (records produced a moment ago may still be on
their way to the broker). The observer's watermark is the minimum over every assigned
partition of every source topic; it is unknown (None) while a partition has neither been read
from nor is known to be fully read, so a lagging or restarted observer fires nothing early.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["PartitionState", "TopicPartition", "Watermarks"]

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


class Watermarks:
    """Per-partition read progress and the observer's watermark (epoch ms)."""

    def __init__(self, idle_grace_ms: int = 0) -> None:
        self.idle_grace_ms = idle_grace_ms
        self._parts: dict[TopicPartition, PartitionState] = {}
        self._last: int | None = None

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

    def value(self, now: int) -> int | None:
        """The observer's watermark: min over assigned partitions; None if any is unknown or
        nothing is assigned."""
        if not self._parts:
            return None
        low: int | None = None
        for tp in self._parts:
            wm = self.partition_watermark(tp, now)
            if wm is None:
                return None
            if low is None or wm < low:
                low = wm
        self._last = low
        return low

    @property
    def last(self) -> int | None:
        """The value computed by the last `value` call."""
        return self._last
