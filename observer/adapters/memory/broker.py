"""`InMemoryBroker`: topics, partitions and consumer groups' committed offsets in memory, shared
by the in-memory sources and sinks (`source.py`, `sink.py`) like a Kafka cluster by its clients."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from observer.ingest import SourceRecord
from observer.runtime.watermark import TopicPartition

__all__ = ["InMemoryBroker"]


class InMemoryBroker:
    """Topics of partitions of records. A topic written to before it exists is created with
    `default_partitions` partitions (as a broker with auto-creation on)."""

    def __init__(self, default_partitions: int = 1) -> None:
        self.default_partitions = default_partitions
        self._logs: dict[str, list[list[SourceRecord]]] = {}
        self._committed: dict[tuple[str, TopicPartition], int] = {}

    def create(self, topic: str, partitions: int) -> None:
        """Create `topic` (or add partitions to it)."""
        logs = self._logs.setdefault(topic, [])
        while len(logs) < partitions:
            logs.append([])

    def partitions(self, topic: str) -> int | None:
        logs = self._logs.get(topic)
        return None if logs is None else len(logs)

    def topics(self) -> list[str]:
        return sorted(self._logs)

    def append(
        self,
        topic: str,
        partition: int | None,
        key: Any,
        value: Any,
        headers: Sequence[tuple[str, Any]] = (),
        timestamp: int = -1,
    ) -> SourceRecord:
        """Append one record (`partition` None: by the key's crc32, or 0 without a key)."""
        if topic not in self._logs:
            self.create(topic, self.default_partitions)
        logs = self._logs[topic]
        if partition is None:
            raw = key if isinstance(key, bytes) else str(key).encode()
            partition = 0 if key is None else zlib.crc32(raw) % len(logs)
        log = logs[partition]
        rec = SourceRecord(topic, partition, len(log), key, value, tuple(headers), timestamp)
        log.append(rec)
        return rec

    def log(self, topic: str, partition: int) -> list[SourceRecord]:
        """The records of a partition, in offset order (the broker's own list: do not change)."""
        return self._logs[topic][partition]

    def records(self, topic: str) -> list[SourceRecord]:
        """Every record of a topic, partition by partition."""
        return [r for log in self._logs.get(topic, []) for r in log]

    def end(self, tp: TopicPartition) -> int:
        """The high-water mark: the offset the next record will get."""
        return len(self._logs[tp[0]][tp[1]])

    def commit(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            self._committed[(group, tp)] = off

    def committed(self, group: str, tp: TopicPartition) -> int | None:
        return self._committed.get((group, tp))
