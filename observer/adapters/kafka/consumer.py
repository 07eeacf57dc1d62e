"""`KafkaEventSource`: the source topics read in batches by a consumer in a group.

Manual commits only (`enable.auto.commit=false`); batches via `consume(num_messages, timeout)`;
the cooperative-sticky assignor, so a rebalance only moves the partitions that change owner.
Rebalance callbacks run inside `poll` on the loop's thread and are forwarded to a listener.

A fatal consumer error ends the process: the consumer cannot be used again. The one to expect
is the fence of static membership: another process joined the group with this process's
`group.instance.id` (OBSERVER_INSTANCE_ID given to two running processes) and Kafka handed it
this member's partitions. The partitions are then reported *lost* to the listener (nothing of
them is committed, their shards are no longer processed here) before `poll` raises.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from observer.errors import ObserverError
from observer.ingest import SourceRecord
from observer.runtime.ports import RebalanceListener
from observer.runtime.watermark import TopicPartition as TP

__all__ = ["KafkaEventSource"]

log = logging.getLogger(__name__)

_DOWN = {KafkaError._ALL_BROKERS_DOWN}
_QUIET = {KafkaError._PARTITION_EOF}
# librdkafka hands a fatal error to `consume` as a message error with this code (its own
# `fatal()` is false); the broker's error is in the text
_FATAL = KafkaError._FATAL


class KafkaEventSource:
    """A confluent-kafka consumer. Not thread-safe: owned by the consumer loop's thread."""

    def __init__(self, settings: Mapping[str, Any], *, values_only: bool = False) -> None:
        """`values_only`: records carry topic, partition, offset and value only (the keyed
        topic, whose key, headers and timestamp the tracker does not read)."""
        self._values_only = values_only
        self._settings = dict(settings)
        conf = dict(settings)
        conf["error_cb"] = self._on_error
        conf["on_commit"] = self._on_commit
        conf["logger"] = logging.getLogger("observer.kafka.consumer")
        try:
            self._consumer = Consumer(conf)
        except KafkaException as exc:
            raise ObserverError(f"cannot create the Kafka consumer: {exc}") from exc
        self._listener: RebalanceListener | None = None
        self._down_since: float | None = None
        self._last_error_log = 0.0
        self._owned: set[TP] = set()  # partitions assigned and not yet revoked or lost
        self._fatal: str | None = None

    # -- health -----------------------------------------------------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in _DOWN:
            if self._down_since is None:
                self._down_since = time.monotonic()
            log.warning("Kafka: %s", err.str())
        elif err.fatal() or err.code() == _FATAL:
            log.error("Kafka fatal error: %s", err.str())
            self._fatal = self._fatal or err.str()
        else:
            log.info("Kafka: %s", err.str())

    def _on_commit(self, err: KafkaError | None, parts: list[TopicPartition]) -> None:
        if self._listener is None:
            return
        offsets = {(p.topic, p.partition): p.offset for p in parts if p.offset >= 0}
        error = None if err is None else err.str()
        if error is None:
            self._down_since = None
        self._listener.commit_done(error, offsets)

    def healthy(self) -> bool:
        return self._down_since is None

    def probe(self, timeout_s: float) -> bool:
        """Ask the cluster for metadata; clears the unhealthy mark when it answers."""
        try:
            md = self._consumer.list_topics(timeout=timeout_s)
        except KafkaException:
            return False
        if md.brokers:
            self._down_since = None
            return True
        return False

    # -- subscription -----------------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self._listener = listener
        self._consumer.subscribe(
            list(topics), on_assign=self._assign, on_revoke=self._revoke, on_lost=self._lost
        )

    @staticmethod
    def _tps(parts: list[TopicPartition]) -> list[TP]:
        return [(p.topic, p.partition) for p in parts]

    def _assign(self, consumer: Any, parts: list[TopicPartition]) -> None:
        self._owned.update(self._tps(parts))
        if self._listener is not None and parts:
            self._listener.assigned(self._tps(parts))

    def _revoke(self, consumer: Any, parts: list[TopicPartition]) -> None:
        self._owned.difference_update(self._tps(parts))
        # after a fatal error the partitions were reported lost already: closing the consumer
        # revokes them again, and an orderly revocation would commit
        if self._listener is not None and parts and self._fatal is None:
            self._listener.revoked(self._tps(parts))

    def _lost(self, consumer: Any, parts: list[TopicPartition]) -> None:
        self._owned.difference_update(self._tps(parts))
        if self._listener is not None and parts and self._fatal is None:
            self._listener.lost(self._tps(parts))

    def _give_up(self, reason: str) -> None:
        """A fatal error: every partition still held is lost (not committed, no longer
        processed here), then raise."""
        lost = sorted(self._owned)
        self._owned.clear()
        if self._listener is not None and lost:
            self._listener.lost(lost)
        group = self._settings.get("group.id")
        instance = self._settings.get("group.instance.id")
        reason = reason.split(": Fatal consumer error:")[0]  # librdkafka says it twice
        if instance and ("instance" in reason.lower() or "fenced" in reason.lower()):
            raise ObserverError(
                f"Kafka: group {group}: {reason}. Another process runs with the same instance "
                f"id ({instance}; OBSERVER_INSTANCE_ID must be unique per running process, "
                "e.g. the pod name); this one gave its partitions up without committing and "
                "stops"
            )
        raise ObserverError(f"Kafka consumer fatal error (group {group}): {reason}")

    # -- reading ----------------------------------------------------------------------------------

    def poll(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        if self._fatal is not None:
            self._give_up(self._fatal)
        try:
            msgs: list[Any] = self._consumer.consume(num_messages=max_records, timeout=timeout_s)
        except KafkaException as exc:
            raise ObserverError(f"Kafka consume failed: {exc}") from exc
        if self._fatal is not None:  # reported to error_cb during this call
            self._give_up(self._fatal)
        out: list[SourceRecord] = []
        append = out.append
        if self._values_only:
            for m in msgs:
                err = m.error()
                if err is not None:
                    self._message_error(err, m)
                    continue
                append(SourceRecord(m.topic(), m.partition(), m.offset(), None, m.value(), (), -1))
            if out and self._down_since is not None:
                self._down_since = None
            return out
        for m in msgs:
            err = m.error()
            if err is not None:
                self._message_error(err, m)
                continue
            rec = SourceRecord(
                m.topic(),
                m.partition(),
                m.offset(),
                m.key(),
                m.value(),
                m.headers() or (),
                m.timestamp()[1],
            )
            append(rec)
        if out and self._down_since is not None:
            self._down_since = None
        return out

    def serve(self, timeout_s: float) -> None:
        """Rebalance callbacks and commit reports; fetched records are dropped (read again
        after the caller's seek), errors handled as in `poll`."""
        if self._fatal is not None:
            self._give_up(self._fatal)
        try:
            msgs: list[Any] = self._consumer.consume(num_messages=1000, timeout=timeout_s)
        except KafkaException as exc:
            raise ObserverError(f"Kafka consume failed: {exc}") from exc
        if self._fatal is not None:
            self._give_up(self._fatal)
        for m in msgs:
            err = m.error()
            if err is not None:
                self._message_error(err, m)

    def _message_error(self, err: KafkaError, m: Any) -> None:
        if err.code() in _QUIET:
            return
        if err.fatal() or err.code() == _FATAL:
            self._fatal = err.str()
            self._give_up(self._fatal)
        now = time.monotonic()
        if now - self._last_error_log > 5.0:  # e.g. a source topic that does not exist yet
            self._last_error_log = now
            log.warning(
                "Kafka consumer: %s (topic %s)", err.str(), m.topic(), extra={"topic": m.topic()}
            )

    # -- offsets ----------------------------------------------------------------------------------

    def commit(self, offsets: Mapping[TP, int], wait: bool) -> None:
        if not offsets:
            return
        parts = [TopicPartition(t, p, off) for (t, p), off in offsets.items()]
        try:
            if wait:
                self._consumer.commit(offsets=parts, asynchronous=False)
            else:
                self._consumer.commit(offsets=parts, asynchronous=True)
        except KafkaException as exc:
            raise ObserverError(f"Kafka commit failed: {exc}") from exc

    def offsets(self, tps: Iterable[TP]) -> dict[TP, tuple[int | None, int | None, int | None]]:
        out: dict[TP, tuple[int | None, int | None, int | None]] = {}
        tps = list(tps)
        if not tps:
            return out
        try:
            positions = self._consumer.position([TopicPartition(t, p) for t, p in tps])
        except KafkaException:
            positions = []
        pos = {(x.topic, x.partition): x.offset for x in positions}
        for tp in tps:
            try:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
            except KafkaException:
                low, high = -1, -1
            p = pos.get(tp, -1)
            out[tp] = (
                low if low >= 0 else None,
                high if high >= 0 else None,
                p if p >= 0 else None,
            )
        return out

    def committed(self, tps: Sequence[TP]) -> dict[TP, int]:
        if not tps:
            return {}
        try:
            parts = self._consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=10)
        except KafkaException as exc:
            log.warning("Kafka: cannot read committed offsets: %s", exc)
            return {}
        return {(x.topic, x.partition): x.offset for x in parts if x.offset >= 0}

    def seek(self, offsets: Mapping[TP, int]) -> None:
        for (topic, partition), offset in offsets.items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log.warning("cannot seek %s[%d] to %d: %s", topic, partition, offset, exc)

    def partitions(self, topics: Sequence[str]) -> dict[str, int] | None:
        try:
            md = self._consumer.list_topics(timeout=5.0)
        except KafkaException:
            return None
        out: dict[str, int] = {}
        for name in topics:
            t = md.topics.get(name)
            if t is not None and t.error is None and t.partitions:
                out[name] = len(t.partitions)
        return out

    def fetch(
        self, wanted: Sequence[tuple[str, int, int]]
    ) -> dict[tuple[str, int, int], SourceRecord]:
        found: dict[tuple[str, int, int], SourceRecord] = {}
        if not wanted:
            return found
        left: dict[TP, set[int]] = {}
        for topic, partition, offset in wanted:
            left.setdefault((topic, partition), set()).add(offset)
        conf = {k: v for k, v in self._settings.items() if not callable(v)}
        conf["group.id"] = f"{conf.get('group.id', 'observer')}.fetch"
        for membership in (
            "partition.assignment.strategy",
            "group.protocol",
            "group.instance.id",  # a reader that never joins must not fence the member
            "session.timeout.ms",
            "heartbeat.interval.ms",
        ):
            conf.pop(membership, None)
        conf["enable.auto.commit"] = False
        reader = Consumer(conf)
        try:
            reader.assign([TopicPartition(t, p, min(offs)) for (t, p), offs in left.items()])
            deadline = time.monotonic() + 10.0
            while left and time.monotonic() < deadline:
                m = reader.poll(0.5)
                if m is None or m.error() is not None:
                    continue
                tp, offset = (m.topic() or "", m.partition() or 0), m.offset() or 0
                offs = left.get(tp)
                if offs is None:
                    continue
                if offset in offs:
                    found[(tp[0], tp[1], offset)] = SourceRecord(
                        tp[0],
                        tp[1],
                        offset,
                        m.key(),
                        m.value(),
                        m.headers() or (),
                        m.timestamp()[1],
                    )
                offs -= {o for o in offs if o <= offset}  # found, or gone (retention)
                if not offs:
                    del left[tp]
                    reader.pause([TopicPartition(*tp)])
        except KafkaException as exc:
            log.warning("cannot read records again for their dead letters: %s", exc)
        finally:
            reader.close()
        return found

    def close(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("Kafka consumer close: %s", exc)
