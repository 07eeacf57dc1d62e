"""`LocalKeyedTopic`: the keyed topic kept in memory, for `routing: direct`.

With one observer process per group, the keyed topic's only reader is the process that wrote
it, so the round trip through the broker buys nothing. This class stands in for both ends:
the router's sink (`RawSink`) and the tracker's source (`EventSource`), with the same
partitions, offsets and order that the broker would give. Everything else the router writes
(dead letters) goes on to the real producer; metadata questions go to the real source consumer.

Acknowledgements are what make it safe: a record counts as delivered, for the router, only
once the tracker *commits* past it, which the tracker does `commit_delay_ms` after its state
write. The router commits a source batch only when all of its records are delivered, so the
source offsets never run ahead of durable state, as with the broker in between. Records are
kept until they are committed, so the tracker's `seek` back to its committed offsets (after a
store failure) reads them again.

Owned by the loop's thread, like the router and the tracker it connects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from observer.ingest import SourceRecord
from observer.runtime.ports import EventSource, RawSink, RebalanceListener
from observer.runtime.watermark import TopicPartition

__all__ = ["LocalKeyedTopic"]

Done = Callable[[str | None], None]


class LocalKeyedTopic:
    """An in-memory keyed topic of `partitions` partitions (one per shard), named `topic`.
    `sink` is the router's end, `source` the tracker's."""

    def __init__(self, topic: str, partitions: int, *, sink: RawSink, source: EventSource) -> None:
        self.topic = topic
        self.partitions = partitions
        # arrival order: (partition, offset, record, on_done); kept until committed
        self._log: deque[tuple[int, int, SourceRecord, Done | None]] = deque()
        self._next = [0] * partitions  # next offset to append, per partition
        self._committed = [0] * partitions
        self._floor = [0] * partitions  # after `seek`: entries below are not read again
        self._read = [0] * partitions  # next offset to read, per partition
        self._cursor = 0  # index into _log of the next entry to read
        self.sink = _RouterEnd(self, sink)
        self.source = _TrackerEnd(self, source)

    def append(self, records: Sequence[tuple[int, Any, Done | None]]) -> None:
        """(shard, value, on_done): a value is bytes, or a `Routed` event with direct routing."""
        append = self._log.append
        nxt = self._next
        name = self.topic
        for partition, value, on_done in records:
            off = nxt[partition]
            nxt[partition] = off + 1
            rec = SourceRecord(name, partition, off, None, value, (), -1)
            append((partition, off, rec, on_done))

    def read(self, max_records: int) -> list[SourceRecord]:
        """Up to `max_records` records not read yet, in the order they were written."""
        out: list[SourceRecord] = []
        log = self._log
        floor = self._floor
        read = self._read
        i = self._cursor
        end = len(log)
        while i < end and len(out) < max_records:
            partition, off, rec, _ = log[i]
            i += 1
            if off >= floor[partition]:
                out.append(rec)
                read[partition] = off + 1
        self._cursor = i
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Records below the committed offsets are delivered: their reports go to the router
        (oldest first) and they are dropped."""
        committed = self._committed
        for (_t, partition), off in offsets.items():
            if off > committed[partition]:
                committed[partition] = off
        log = self._log
        popleft = log.popleft
        done: list[Done] = []  # (once per record: locals only, reports after the loop)
        gone = 0
        while log:
            partition, off, _rec, on_done = log[0]
            if off >= committed[partition]:
                break
            popleft()
            gone += 1
            if on_done is not None:
                done.append(on_done)
        self._cursor = max(self._cursor - gone, 0)
        for on_done in done:
            on_done(None)

    def committed(self, partition: int) -> int:
        return self._committed[partition]

    def seek(self, partition: int, offset: int) -> None:
        """Read again from `offset` (never below what is committed: that is gone)."""
        self._floor[partition] = self._read[partition] = max(offset, self._committed[partition])
        self._cursor = 0

    def offsets(self, partition: int) -> tuple[int, int, int]:
        """(low, high, position) as a broker would report them."""
        return self._committed[partition], self._next[partition], self._read[partition]

    def unread(self) -> int:
        """Records written and not read yet: the router waits while there are many."""
        return len(self._log) - self._cursor


class _RouterEnd:
    """`RawSink`: keyed records into memory, anything else on to the real producer. Keyed
    events may come as `keyed.Routed` objects rather than bytes (`keeps_objects`): the tracker
    reads them back from memory as they are."""

    keeps_objects = True

    def __init__(self, topic: LocalKeyedTopic, sink: RawSink) -> None:
        self._topic = topic
        self._sink = sink

    def produce(
        self,
        topic: str,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, Any]],
        timestamp: int | None,
        on_done: Done | None,
    ) -> None:
        if topic == self._topic.topic:
            raise ValueError("keyed records go through produce_values")
        self._sink.produce(topic, partition, key, value, headers, timestamp, on_done)

    def produce_values(self, topic: str, records: Sequence[tuple[int, Any, Done | None]]) -> None:
        if topic == self._topic.topic:
            self._topic.append(records)
        else:
            self._sink.produce_values(topic, records)

    def poll(self, timeout_s: float) -> None:
        self._sink.poll(timeout_s)

    def flush(self, timeout_s: float) -> int:
        """The real producer's outstanding records. Keyed records are acknowledged by the
        tracker's commits, which flushing cannot hurry, so they are not counted."""
        return self._sink.flush(timeout_s)

    def close(self) -> None:
        self._sink.close()


class _TrackerEnd:
    """`EventSource`: the tracker reads the keyed topic from memory and is assigned all of it;
    metadata, health and re-reading source records go to the real source consumer."""

    def __init__(self, topic: LocalKeyedTopic, source: EventSource) -> None:
        self._topic = topic
        self._source = source
        self._listener: RebalanceListener | None = None
        self._assigned = False
        self._reports: list[dict[TopicPartition, int]] = []

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        if list(topics) != [self._topic.topic]:
            raise ValueError(f"the local keyed topic is {self._topic.topic}, not {list(topics)}")
        self._listener = listener

    def poll(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        """Never waits: the router's poll, just before, did."""
        listener = self._listener
        if listener is None:
            return []
        if not self._assigned:
            self._assigned = True
            listener.assigned([(self._topic.topic, p) for p in range(self._topic.partitions)])
        if self._reports:
            reports, self._reports = self._reports, []
            for offsets in reports:
                listener.commit_done(None, offsets)
        return self._topic.read(max_records)

    def serve(self, timeout_s: float) -> None:
        """The assignment and commit reports; nothing is read, so the router, whose backlog
        stops draining, stops reading too (memory stays bounded while the store is down)."""
        self.poll(0, timeout_s)

    def commit(self, offsets: Mapping[TopicPartition, int], wait: bool) -> None:
        self._topic.commit(offsets)
        if not wait:
            self._reports.append(dict(offsets))  # reported from the next poll, like Kafka

    def committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._topic.committed(tp[1]) for tp in tps}

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        for (_t, partition), off in offsets.items():
            self._topic.seek(partition, off)

    def offsets(
        self, tps: Iterable[TopicPartition]
    ) -> dict[TopicPartition, tuple[int | None, int | None, int | None]]:
        return {tp: self._topic.offsets(tp[1]) for tp in tps}

    def healthy(self) -> bool:
        return self._source.healthy()

    def probe(self, timeout_s: float) -> bool:
        return self._source.probe(timeout_s)

    def partitions(self, topics: Sequence[str]) -> dict[str, int] | None:
        return self._source.partitions(topics)

    def fetch(
        self, wanted: Sequence[tuple[str, int, int]]
    ) -> dict[tuple[str, int, int], SourceRecord]:
        return self._source.fetch(wanted)

    def close(self) -> None:
        """The real consumer is closed by the router."""
