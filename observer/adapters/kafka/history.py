"""`HistoryReader`: a period of topics read back for back-testing (`observer backtest`,
`observer suggest`): never in a consumer group, never committing.

Every partition is read from the first offset whose timestamp is at or after the start
(`offsets_for_times`) to the first at or after the end (or the end of the partition as it is
when the read starts). Records come out merged in timestamp order across partitions, as the
replay engine's virtual clock wants them; memory holds at most `buffer` records per partition
(a partition that is that far ahead of the others is paused until they catch up).
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from observer.errors import ObserverError
from observer.ingest import SourceRecord

__all__ = ["HistoryReader", "ReadPlan"]

log = logging.getLogger(__name__)

TP = tuple[str, int]


@dataclass
class ReadPlan:
    """Offsets to read per partition ([start, end)), and topics that do not exist."""

    ranges: dict[TP, tuple[int, int]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(end - start for start, end in self.ranges.values())


class HistoryReader:
    """Reads periods of topics. `settings`: librdkafka consumer settings (a group id of its
    own is set; nothing is committed)."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        buffer: int = 2_000,
        idle_timeout_s: float = 30.0,
        timeout_s: float = 10.0,
    ) -> None:
        conf = dict(settings)
        conf.update(
            {
                "group.id": f"{conf.get('group.id', 'observer')}.backtest-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "auto.offset.reset": "earliest",
                "logger": logging.getLogger("observer.kafka.history"),
            }
        )
        try:
            self._consumer = Consumer(conf)
        except KafkaException as exc:
            raise ObserverError(f"cannot create the Kafka consumer: {exc}") from exc
        self._buffer = max(buffer, 2)
        self._idle_timeout_s = idle_timeout_s
        self._timeout_s = timeout_s

    def plan(self, topics: Sequence[str], since_ms: int, until_ms: int | None) -> ReadPlan:
        """Where [since, until) starts and ends on every partition (until None: the end of
        each partition now)."""
        out = ReadPlan()
        try:
            meta = self._consumer.list_topics(timeout=self._timeout_s).topics
            tps = []
            for topic in sorted(set(topics)):
                md = meta.get(topic)
                if md is None or md.error is not None:
                    out.missing.append(topic)
                    continue
                tps += [(topic, p) for p in sorted(md.partitions)]
            starts = self._offsets_at(tps, since_ms)
            ends = self._offsets_at(tps, until_ms) if until_ms is not None else {}
            for tp in tps:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(*tp), timeout=self._timeout_s
                )
                start = starts.get(tp, -1)
                start = high if start < 0 else max(start, low)
                end = ends.get(tp, -1) if until_ms is not None else high
                end = high if end < 0 else min(end, high)
                if start < end:
                    out.ranges[tp] = (start, end)
        except KafkaException as exc:
            raise ObserverError(f"cannot find the offsets of the period: {exc}") from exc
        return out

    def _offsets_at(self, tps: list[TP], at_ms: int) -> dict[TP, int]:
        if not tps:
            return {}
        found = self._consumer.offsets_for_times(
            [TopicPartition(t, p, at_ms) for t, p in tps], timeout=self._timeout_s
        )
        return {(f.topic, f.partition): f.offset for f in found}

    def read(
        self, plan: ReadPlan, progress: Callable[[int], None] | None = None
    ) -> Iterator[SourceRecord]:
        """The records of the plan, in timestamp order across partitions (ties: topic, then
        partition); `progress(n)` is told of every n records read."""
        merge = _Merge(self._consumer, plan, self._buffer)
        self._consumer.assign([TopicPartition(t, p, s) for (t, p), (s, _e) in plan.ranges.items()])
        idle_since = time.monotonic()
        try:
            while True:
                if merge.waiting():
                    n = merge.fetch()
                    if progress is not None and n:
                        progress(n)
                    if n:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since > self._idle_timeout_s:
                        raise ObserverError(
                            f"no records for {self._idle_timeout_s:g}s from "
                            f"{', '.join(f'{t}[{p}]' for t, p in merge.waiting())}"
                        )
                    continue
                rec = merge.pop()
                if rec is None:
                    return
                yield rec
        finally:
            self._consumer.unassign()

    def close(self) -> None:
        self._consumer.close()


class _Merge:
    """Per-partition buffers and a heap of their heads: the next record in timestamp order is
    known once every partition not finished has one buffered."""

    def __init__(self, consumer: Any, plan: ReadPlan, cap: int) -> None:
        self._consumer = consumer
        self._ends = {tp: end for tp, (_s, end) in plan.ranges.items()}
        self._buffers: dict[TP, deque[SourceRecord]] = {tp: deque() for tp in self._ends}
        self._done: set[TP] = set()
        self._paused: set[TP] = set()
        self._heads: list[tuple[int, str, int]] = []
        self._cap = cap

    def waiting(self) -> list[TP]:
        """Partitions not finished whose next record is not buffered yet."""
        return [tp for tp, buf in self._buffers.items() if not buf and tp not in self._done]

    def fetch(self) -> int:
        try:
            msgs = self._consumer.consume(num_messages=1000, timeout=0.5)
        except KafkaException as exc:
            raise ObserverError(f"Kafka consume failed: {exc}") from exc
        n = 0
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise ObserverError(f"reading {m.topic()}[{m.partition()}]: {err.str()}")
            tp = (m.topic(), m.partition())
            end = self._ends.get(tp)
            if end is None or tp in self._done:
                continue
            if m.offset() >= end:
                self._finish(tp)
                continue
            n += 1
            buf = self._buffers[tp]
            rec = SourceRecord(
                tp[0], tp[1], m.offset(), m.key(), m.value(), m.headers() or (), m.timestamp()[1]
            )
            if not buf:
                heapq.heappush(self._heads, (rec.timestamp, *tp))
            buf.append(rec)
            if m.offset() >= end - 1:
                self._finish(tp)
            elif len(buf) >= self._cap:
                self._pause(tp)
        for tp in self.waiting():  # what lies before `end` may be gone (compaction, markers)
            (pos,) = self._consumer.position([TopicPartition(*tp)])
            if pos.offset >= self._ends[tp]:
                self._finish(tp)
        return n

    def pop(self) -> SourceRecord | None:
        if not self._heads:
            return None
        _ts, topic, partition = heapq.heappop(self._heads)
        tp = (topic, partition)
        buf = self._buffers[tp]
        rec = buf.popleft()
        if buf:
            heapq.heappush(self._heads, (buf[0].timestamp, *tp))
        if tp in self._paused and tp not in self._done and len(buf) < self._cap // 2:
            self._paused.discard(tp)
            self._consumer.resume([TopicPartition(*tp)])
        return rec

    def _pause(self, tp: TP) -> None:
        if tp not in self._paused:
            self._paused.add(tp)
            self._consumer.pause([TopicPartition(*tp)])

    def _finish(self, tp: TP) -> None:
        self._done.add(tp)
        self._pause(tp)
