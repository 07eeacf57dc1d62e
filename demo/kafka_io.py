"""The demo's Kafka plumbing: topics, a fresh consumer group that starts at the end, the
producer, and the feed of what the observer publishes. All confluent-kafka use is here."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from demo.wire import DemoError

__all__ = [
    "FeedRecord",
    "ObserverFeed",
    "connect",
    "ensure_topics",
    "make_producer",
    "start_group_at_end",
]

log = logging.getLogger(__name__)
PARTITIONS = 4


def _quiet(conf: dict[str, Any]) -> dict[str, Any]:
    # librdkafka logs through Python logging (configured to a file by the demo), not stderr
    conf["logger"] = logging.getLogger("demo.kafka")
    return conf


def connect(bootstrap: str, timeout_s: float = 5.0) -> AdminClient:
    """An AdminClient that has answered a metadata request; DemoError if Kafka is not there."""
    admin = AdminClient(_quiet({"bootstrap.servers": bootstrap}))
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise DemoError(
            f"Kafka does not answer at {bootstrap} ({exc.args[0] if exc.args else exc}).\n"
            "Start the local stack with `ops/stack start`, or pass --bootstrap-servers."
        ) from None
    return admin


def ensure_topics(
    admin: AdminClient, names: Iterable[str], partitions: int = PARTITIONS
) -> list[str]:
    """Create the topics that do not exist yet; returns those created."""
    have = set(admin.list_topics(timeout=10).topics)
    missing = sorted(set(names) - have)
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in missing]
    )
    for name, fut in futures.items():
        try:
            fut.result(timeout=15)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise DemoError(f"cannot create topic {name}: {exc}") from None
    # metadata can lag creation by a moment; wait until every topic is visible
    for _ in range(50):
        if set(missing) <= set(admin.list_topics(timeout=10).topics):
            break
        time.sleep(0.1)
    return missing


def _partitions(admin: AdminClient, topics: Iterable[str]) -> list[TopicPartition]:
    md = admin.list_topics(timeout=10)
    return [TopicPartition(t, p) for t in sorted(topics) for p in sorted(md.topics[t].partitions)]


def _ends(
    bootstrap: str, parts: list[TopicPartition], timeout_s: float = 20.0
) -> list[TopicPartition]:
    """The end offset of each partition. Retries while a new topic's leaders are being elected."""
    probe = Consumer(_quiet({"bootstrap.servers": bootstrap, "group.id": "observer-demo-probe"}))
    deadline = time.monotonic() + timeout_s
    try:
        out = []
        for tp in parts:
            while True:
                try:
                    _, high = probe.get_watermark_offsets(tp, timeout=5)
                    break
                except KafkaException as exc:
                    if time.monotonic() > deadline:
                        raise DemoError(
                            f"cannot read the end of {tp.topic}[{tp.partition}]: {exc}"
                        ) from None
                    time.sleep(0.2)
            out.append(TopicPartition(tp.topic, tp.partition, high))
        return out
    finally:
        probe.close()


def start_group_at_end(
    admin: AdminClient, bootstrap: str, group: str, topics: Iterable[str]
) -> None:
    """Commit a new consumer group's offsets at the end of `topics`, so an observer joining it
    reads only what is published from now on (not the shop records of earlier demo runs)."""
    ends = _ends(bootstrap, _partitions(admin, topics))
    futures = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, ends)])
    for fut in futures.values():
        try:
            fut.result(timeout=15)
        except KafkaException as exc:
            raise DemoError(f"cannot set the offsets of consumer group {group}: {exc}") from None


def make_producer(bootstrap: str) -> Producer:
    return Producer(
        _quiet({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    )


@dataclass(frozen=True, slots=True)
class FeedRecord:
    """A record the observer published, decoded: JSON value (or None), UTF-8 headers."""

    topic: str
    key: str | None
    value: Any
    headers: dict[str, str]
    timestamp: int


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _headers(raw: Any) -> dict[str, str]:
    pairs = raw.items() if isinstance(raw, dict) else (raw or [])
    return {str(k): _text(v) or "" for k, v in pairs}


class ObserverFeed:
    """Reads the observer's alerts, outcomes and commands from the end of their topics as they
    are when the feed is created (assigned partitions, no consumer group to join)."""

    def __init__(self, admin: AdminClient, bootstrap: str, topics: Iterable[str]) -> None:
        self._consumer = Consumer(
            _quiet(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": "observer-demo-feed",  # required by the client; never used to commit
                    "enable.auto.commit": False,
                    "fetch.queue.backoff.ms": 10,
                    "fetch.wait.max.ms": 50,
                }
            )
        )
        self._consumer.assign(_ends(bootstrap, _partitions(admin, topics)))
        self.errors: list[str] = []

    def poll(self, timeout_s: float) -> list[FeedRecord]:
        """Records that arrived, waiting at most `timeout_s` for the first one."""
        out = []
        for m in self._consumer.consume(num_messages=500, timeout=timeout_s):
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self.errors.append(str(err))
                continue
            raw: Any = m.value()
            try:
                value = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                value = None
            _, ts = m.timestamp()
            out.append(FeedRecord(str(m.topic()), _text(m.key()), value, _headers(m.headers()), ts))
        return out

    def close(self) -> None:
        self._consumer.close()
