"""`KafkaRecordSink`: the idempotent producer that publishes outbox records.

`enable.idempotence=true` and `acks=all` are forced by the configuration; every record carries
its `observer-id` header (already in the record's headers). Delivery reports are served by
`poll`/`flush` on the loop's thread. A record the client or the broker refuses for good (too
large, invalid) is reported as `final` to `send`'s caller, whether librdkafka refused it at once
or in its delivery report: one such record never stops the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from observer.errors import ObserverError
from observer.runtime.outbox import OutboxRecord

__all__ = ["KafkaRecordSink"]

log = logging.getLogger(__name__)

# errors of one record that retrying cannot help (the client's or the broker's verdict)
_FINAL = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_TIMESTAMP,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError._INVALID_ARG,
    }
)


class KafkaRecordSink:
    """A confluent-kafka producer. `send` blocks (serving delivery reports) while the local
    queue is full, which slows the loop down instead of dropping records."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        conf = dict(settings)
        conf["error_cb"] = self._on_error
        conf["logger"] = logging.getLogger("observer.kafka.producer")
        try:
            self._producer = Producer(conf)
        except KafkaException as exc:
            raise ObserverError(f"cannot create the Kafka producer: {exc}") from exc
        self.fatal: str | None = None
        # records refused as soon as they were handed over: reported by the next poll
        self._refused: list[tuple[Callable[[str, str | None, bool], None], str, str]] = []

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err.str()
            log.error("Kafka producer fatal error: %s", err.str())
        else:
            log.info("Kafka producer: %s", err.str())

    def send(self, record: OutboxRecord, on_done: Callable[[str, str | None, bool], None]) -> None:
        if record.topic is None:
            raise ValueError("a Kafka record needs a topic")
        oid = record.observer_id

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                on_done(oid, None, False)
            else:
                on_done(oid, err.str(), err.code() in _FINAL)

        kwargs: dict[str, Any] = {"on_delivery": delivered}
        if record.headers:
            kwargs["headers"] = list(record.headers)
        while True:
            try:
                self._producer.produce(record.topic, record.value, record.key, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not isinstance(err, KafkaError) or err.code() not in _FINAL:
                    raise ObserverError(f"cannot produce to {record.topic}: {exc}") from exc
                self._refused.append((on_done, oid, err.str()))
                return
            if self.fatal is not None:
                raise ObserverError(f"Kafka producer failed: {self.fatal}")

    def _report_refused(self) -> None:
        refused, self._refused = self._refused, []
        for on_done, oid, error in refused:
            on_done(oid, error, True)

    def produce(
        self,
        topic: str,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, Any]],
        timestamp: int | None,
        on_done: Callable[[str | None], None] | None,
    ) -> None:
        """Hand a record over as it is; `on_done(error)` once acknowledged (or given up)."""
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp is not None:
            kwargs["timestamp"] = timestamp
        if headers:
            kwargs["headers"] = list(headers)
        if on_done is not None:
            kwargs["on_delivery"] = _report(on_done)
        while True:
            try:
                self._producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise ObserverError(f"cannot produce to {topic}: {exc}") from exc
            if self.fatal is not None:
                raise ObserverError(f"Kafka producer failed: {self.fatal}")

    def produce_values(
        self,
        topic: str,
        records: Sequence[tuple[int, bytes, Callable[[str | None], None] | None]],
    ) -> None:
        """(partition, value, on_done) records without key, headers or timestamp (the broker
        stamps them), handed over with one `produce_batch` per partition; order is kept per
        partition. (`produce_batch` ignores a per-message partition: confluent-kafka 2.16.)"""
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for partition, value, on_done in records:
            msgs = by_partition.get(partition)
            if msgs is None:
                msgs = by_partition[partition] = []
            if on_done is None:
                msgs.append({"value": value})
            else:
                msgs.append({"value": value, "callback": _report(on_done)})
        for partition, msgs in by_partition.items():
            self._produce_batch(topic, partition, msgs)

    def _produce_batch(self, topic: str, partition: int, msgs: list[dict[str, Any]]) -> None:
        while msgs:
            try:
                self._producer.produce_batch(topic, msgs, partition=partition)
            except BufferError:  # not marked per message: hand the whole batch over again
                self._producer.poll(0.05)
                continue
            except KafkaException as exc:
                raise ObserverError(f"cannot produce to {topic}: {exc}") from exc
            failed = [m for m in msgs if "_error" in m]
            if not failed:
                return
            if self.fatal is not None:
                raise ObserverError(f"Kafka producer failed: {self.fatal}")
            if any(m["_error"].code() != KafkaError._QUEUE_FULL for m in failed):
                raise ObserverError(f"cannot produce to {topic}: {failed[0]['_error']}")
            msgs = failed  # the local queue is full: serve deliveries, then the rest, in order
            for m in msgs:
                del m["_error"]
            self._producer.poll(0.05)

    def poll(self, timeout_s: float) -> None:
        if self._refused:
            self._report_refused()
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float) -> int:
        if self._refused:
            self._report_refused()
        deadline = time.monotonic() + timeout_s
        remaining = int(self._producer.flush(max(0.0, timeout_s)))
        while remaining and time.monotonic() < deadline:
            remaining = int(self._producer.flush(max(0.0, deadline - time.monotonic())))
        return remaining

    def close(self) -> None:
        self._producer.flush(0)


def _report(on_done: Callable[[str | None], None]) -> Callable[[KafkaError | None, Message], None]:
    def delivered(err: KafkaError | None, msg: Message) -> None:
        on_done(None if err is None else err.str())

    return delivered
