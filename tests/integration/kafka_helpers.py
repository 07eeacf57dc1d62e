"""Small, blocking helpers for integration tests: produce records, read a topic back, wait for
topics, wait for an observer to have processed what a topic holds. Times are in seconds. No
fixtures here (see conftest.py), so other test packages (e2e, chaos) can import them too.

Reading never waits a fixed time: `consume_all` reads to the end offsets seen when it starts,
or until the records it was told to expect are there (with a bound); `wait_caught_up` waits
until an observer's consumer groups have committed what the topics held."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient

__all__ = [
    "Record",
    "committed_offsets",
    "consume_all",
    "end_offsets",
    "produce",
    "topic_exists",
    "wait_caught_up",
    "wait_for_topics",
]

Bytes = bytes | str | None
Headers = Sequence[tuple[str, bytes | str | None]]


@dataclass(frozen=True)
class Record:
    """One record read back from Kafka; headers keep their order and duplicates."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp_ms: int

    def header(self, name: str) -> bytes | None:
        """The last value of header `name`, or None when absent."""
        found = [v for k, v in self.headers if k == name]
        return found[-1] if found else None


def produce(
    bootstrap_servers: str,
    topic: str,
    records: Iterable[tuple[Bytes, Bytes]],
    *,
    headers: Headers | None = None,
    partition: int | None = None,
    timeout: float = 10.0,
) -> int:
    """Produces (key, value) records with the same headers, waits for every delivery and raises
    on any failure. Returns the number of records delivered."""
    producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True})
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    count = 0
    for key, value in records:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": on_delivery}
        if headers is not None:
            kwargs["headers"] = list(headers)
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, **kwargs)
        producer.poll(0)
        count += 1
    remaining = producer.flush(timeout)
    if remaining:
        raise TimeoutError(f"{remaining} record(s) to {topic} not delivered within {timeout}s")
    if errors:
        raise KafkaException(f"delivery to {topic} failed: {errors[:3]}")
    return count


def topic_exists(admin: AdminClient, topic: str, partitions: int | None = None) -> bool:
    """Whether the topic exists and every partition (at least `partitions` of them) has a leader."""
    meta = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        return False
    if partitions is not None and len(meta.partitions) < partitions:
        return False
    return all(p.leader >= 0 for p in meta.partitions.values())


def wait_for_topics(
    admin: AdminClient, topics: Iterable[str], partitions: int | None = None, timeout: float = 30.0
) -> None:
    """Blocks until every topic exists with leaders for all its partitions, or raises TimeoutError."""
    pending = set(topics)
    deadline = time.monotonic() + timeout
    while pending:
        pending = {t for t in pending if not topic_exists(admin, t, partitions)}
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not ready within {timeout}s: {sorted(pending)}")
        time.sleep(0.1)


def _to_record(msg: Any) -> Record:
    raw_headers = msg.headers() or []
    return Record(
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        key=msg.key(),
        value=msg.value(),
        headers=tuple((k, v) for k, v in raw_headers),
        timestamp_ms=msg.timestamp()[1],
    )


def consume_all(
    bootstrap_servers: str,
    topic: str,
    *,
    timeout: float = 10.0,
    min_count: int | None = None,
    until: Callable[[list[Record]], bool] | None = None,
) -> list[Record]:
    """Reads a topic from the beginning of every partition, without a consumer group rebalance
    (partitions are assigned directly; no offsets are committed).

    Without `min_count` or `until`: returns everything up to the end offsets seen when the read
    starts. With `min_count` (at least that many records) or `until` (a test of the records read
    so far): keeps reading (records may still be arriving) until it holds or `timeout` passes,
    and returns what it has either way, so the caller's assertion shows what came. Records are
    sorted by (partition, offset).
    """
    if min_count is not None:
        wanted = min_count

        def until(records: list[Record]) -> bool:
            return len(records) >= wanted

    deadline = time.monotonic() + timeout
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"consume-all-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        meta = None
        while meta is None:
            found = consumer.list_topics(topic=topic, timeout=5).topics.get(topic)
            if found is not None and found.error is None and found.partitions:
                meta = found
            elif time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} does not exist after {timeout}s")
            else:
                time.sleep(0.1)
        partitions = sorted(meta.partitions)
        consumer.assign([KafkaTopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

        end: dict[int, int] = {}
        if until is None:
            for p in partitions:
                low, high = consumer.get_watermark_offsets(
                    KafkaTopicPartition(topic, p), timeout=max(deadline - time.monotonic(), 1)
                )
                if high > low:
                    end[p] = high
        records: list[Record] = []
        while time.monotonic() < deadline:
            if until is None and not end:
                break
            if until is not None and until(records):
                break
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            record = _to_record(msg)
            records.append(record)
            if until is None and record.offset + 1 >= end.get(record.partition, 0):
                end.pop(record.partition, None)
        if until is None and end:
            raise TimeoutError(
                f"read {len(records)} record(s) of {topic} but not up to its end offsets "
                f"{end} within {timeout}s"
            )
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def end_offsets(bootstrap_servers: str, topic: str) -> dict[int, int]:
    """Partition -> end offset (high watermark) of every partition of a topic, now."""
    c = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "end-offsets"})
    try:
        meta = c.list_topics(topic=topic, timeout=10).topics[topic]
        return {
            p: c.get_watermark_offsets(KafkaTopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in sorted(meta.partitions)
        }
    finally:
        c.close()


def committed_offsets(
    bootstrap_servers: str, group: str, topic: str, partitions: Iterable[int]
) -> dict[int, int]:
    """Partition -> offset the group committed (0 where it committed nothing yet)."""
    c = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group})
    try:
        done = c.committed([KafkaTopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in done}
    finally:
        c.close()


def _wait_committed(
    bootstrap_servers: str, group: str, topic: str, ends: dict[int, int], deadline: float
) -> None:
    while True:
        done = committed_offsets(bootstrap_servers, group, topic, ends)
        behind = {p: (done.get(p, 0), end) for p, end in ends.items() if done.get(p, 0) < end}
        if not behind:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"group {group} has not committed {topic} up to {ends}: {behind}")
        time.sleep(0.1)


def wait_caught_up(
    bootstrap_servers: str,
    group: str,
    sources: Sequence[str],
    *,
    keyed_topic: str | None = None,
    timeout: float = 60.0,
) -> None:
    """Blocks until an `observer run` group has processed, durably, every record the source
    topics hold now, or raises TimeoutError: the group `group` committed them all, and with
    keyed routing (`keyed_topic`: `<group>.observer-keyed` unless OBSERVER_KEYED_TOPIC says
    otherwise) its tracker's group `<group>.keyed` committed the keyed topic up to where it
    ended at that point. The observer commits only after its Redis write (docs/running.md);
    with direct routing the source group's commits already come after the tracker's.
    What the processed records made the observer publish is then in its outbox or on Kafka:
    wait for `observer_outbox_depth` 0 too before reading the outputs to their end."""
    deadline = time.monotonic() + timeout
    for topic in sources:
        _wait_committed(
            bootstrap_servers, group, topic, end_offsets(bootstrap_servers, topic), deadline
        )
    if keyed_topic is not None:
        ends = end_offsets(bootstrap_servers, keyed_topic)
        _wait_committed(bootstrap_servers, f"{group}.keyed", keyed_topic, ends, deadline)
