"""`KafkaAlertFeed`: the latest records of the alerts topic for the web console (the
`AlertFeed` port of `observer/console/ports.py`).

The alerts topic is what every process of the group publishes to, so each process's console
shows the same alerts: a thread of its own (started by the first request that wants them)
assigns every partition of the topic — no consumer group, nothing committed — from `tail`
records before its end, then follows it, keeping the last `keep` records in memory. Reading
the topic rather than keeping a list in Redis keeps the hot path as it is.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from observer.errors import StoreError

__all__ = ["KafkaAlertFeed"]

log = logging.getLogger(__name__)


class KafkaAlertFeed:
    def __init__(
        self,
        settings: Mapping[str, Any],
        topic: str,
        *,
        keep: int = 2_000,
        tail: int = 500,
        timeout_s: float = 5.0,
    ) -> None:
        conf = {k: v for k, v in settings.items() if k != "group.instance.id"}
        conf.update(
            {
                "group.id": f"{conf.get('group.id', 'observer')}.console-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "logger": logging.getLogger("observer.kafka.console"),
            }
        )
        self._conf = conf
        self._topic = topic
        self._tail = tail
        self._timeout_s = timeout_s
        self._records: deque[tuple[int, dict[str, Any]]] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = "not read yet"
        self._ready = threading.Event()  # the tail read once (or the reader gave up)

    def recent(self) -> list[dict[str, Any]]:
        self._start()
        self._ready.wait(self._timeout_s)  # the first request waits for the tail
        with self._lock:
            records = list(self._records)
            error = self._error
        if error is not None and not records:
            raise StoreError(f"cannot read the alerts topic {self._topic}: {error}")
        records.sort(key=lambda r: r[0], reverse=True)
        return [r for _, r in records]

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="observer-console-alerts")
            self._thread.daemon = True
            self._thread.start()

    def _assign(self, consumer: Any) -> bool:
        meta = consumer.list_topics(self._topic, timeout=self._timeout_s).topics.get(self._topic)
        if meta is None or meta.error is not None or not meta.partitions:
            with self._lock:
                self._error = f"topic {self._topic} not found"
            return False
        tps = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self._topic, p), timeout=self._timeout_s
            )
            tps.append(TopicPartition(self._topic, p, max(low, high - self._tail)))
        consumer.assign(tps)
        with self._lock:
            self._error = None
        return True

    def _run(self) -> None:
        consumer = None
        try:
            consumer = Consumer(self._conf)
            while not self._stop.is_set() and not self._assign(consumer):
                self._stop.wait(2.0)
            while not self._stop.is_set():
                batch = consumer.consume(500, timeout=0.5)
                for msg in batch:
                    if msg.error() is None:
                        self._add(msg.timestamp()[1], msg.value())
                if len(batch) < 500:
                    self._ready.set()  # caught up with the tail
        except KafkaException as exc:
            log.warning("the console stopped reading %s: %s", self._topic, exc)
            with self._lock:
                self._error = str(exc)
        finally:
            self._ready.set()
            if consumer is not None:
                consumer.close()

    def _add(self, at: int, value: bytes | None) -> None:
        try:
            record = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            return
        if isinstance(record, dict):
            with self._lock:
                self._records.append((at, record))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
