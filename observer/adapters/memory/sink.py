"""`InMemoryRawSink` and `InMemoryRecordSink`: the producer ports over an `InMemoryBroker`.

A record is appended to its partition when handed over; its delivery report comes from `poll`
or `flush`, as a Kafka producer's does. Tests can `hold()` the reports (records stay
unacknowledged until `release()`) and `fail_next(n)`: the next n records are refused by the
broker (not written; their report carries an error).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from observer.adapters.memory.broker import InMemoryBroker
from observer.runtime.outbox import OutboxRecord

__all__ = ["InMemoryRawSink", "InMemoryRecordSink"]

Done = Callable[[str | None], None]


class _Producer:
    """Records appended at once; their reports queued until served."""

    def __init__(self, broker: InMemoryBroker) -> None:
        self.broker = broker
        self.held = False
        self.closed = False
        self._reports: list[tuple[Done, str | None]] = []
        self._failing: list[tuple[str, str | None]] = []  # (error, only records of topic)
        # errors a record sink reports as final (the broker refuses the record for good)
        self.final_errors: set[str] = set()

    def hold(self) -> None:
        """Keep the delivery reports (the broker does not acknowledge) until `release`."""
        self.held = True

    def release(self) -> None:
        self.held = False

    def fail_next(
        self,
        n: int = 1,
        error: str = "Local: Message timed out",
        final: bool = False,
        topic: str | None = None,
    ) -> None:
        """The next `n` records (of `topic`, if given) are not written; their reports say
        `error` (`final`: the broker refuses them for good, as a too-large record)."""
        self._failing += [(error, topic)] * n
        if final:
            self.final_errors.add(error)

    def _produce(
        self,
        topic: str,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, Any]],
        timestamp: int | None,
        on_done: Done | None,
    ) -> None:
        error: str | None = None
        for i, (failure, only) in enumerate(self._failing):
            if only is None or only == topic:
                error = failure
                del self._failing[i]
                break
        if error is None:
            self.broker.append(
                topic, partition, key, value, headers, -1 if timestamp is None else timestamp
            )
        if on_done is not None:
            self._reports.append((on_done, error))

    def outstanding(self) -> int:
        return len(self._reports)

    def poll(self, timeout_s: float) -> None:
        if self.held:
            return
        reports, self._reports = self._reports, []
        for on_done, error in reports:
            on_done(error)

    def flush(self, timeout_s: float) -> int:
        """Serve every report (none while held); how many are left."""
        self.poll(0)
        return len(self._reports)

    def close(self) -> None:
        self.closed = True


class InMemoryRawSink(_Producer):
    """`RawSink`: records written as they are (the keyed topic, dead letters)."""

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
        self._produce(topic, partition, key, value, headers, timestamp, on_done)

    def produce_values(self, topic: str, records: Sequence[tuple[int, bytes, Done | None]]) -> None:
        for partition, value, on_done in records:
            self._produce(topic, partition, None, value, (), None, on_done)


class InMemoryRecordSink(_Producer):
    """`RecordSink`: the observer's outbox records, partitioned by key."""

    def send(self, record: OutboxRecord, on_done: Callable[[str, str | None, bool], None]) -> None:
        if record.topic is None:
            raise ValueError("a Kafka record needs a topic")
        oid = record.observer_id
        self._produce(
            record.topic,
            None,
            record.key,
            record.value,
            record.headers,
            None,
            lambda error: on_done(oid, error, error is not None and error in self.final_errors),
        )
