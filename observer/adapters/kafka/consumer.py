"""`KafkaEventSource`: the source topics read in batches by a consumer in a group.

Manual commits only (`enable.auto.commit=false`); batches via `consume(num_messages, timeout)`;
the cooperative-sticky assignor, so a rebalance only moves the partitions that change owner.
Rebalance callbacks run inside `poll` on the loop's thread and are forwarded to a listener.

A fatal consumer error ends the process: the consumer cannot be used again. The one to expect
is the fence of static membership: another process joined the group with this process's
`group.instance.id` (OBSERVER_INSTANCE_ID given to two running processes) and Kafka handed it
this member's partitions. The partitions are then reported *lost* to the listener (nothing of
them is committed, their shards are no longer processed here) before `poll` raises.

Except when the consumer fenced itself: after a session timeout (a broker away for longer than
`session.timeout.ms`), a commit queued with the old member id can reach the broker after the
consumer rejoined under a new one, and the broker fences the instance (librdkafka #3437). Then
no live member holds the instance id (the group says so, at once or once the stale
membership's session has ended: it is asked for up to two sessions), and the consumer is
created again and rejoins instead of stopping the process; at most once a minute, so two
processes given the same id still stop rather than take the member from each other forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

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
_RESTART_EVERY_S = 60.0  # a fenced consumer is created again at most this often
# settings an admin client shares with the consumer (where and how to connect)
_CLIENT_PREFIXES = ("bootstrap.", "security.", "sasl.", "ssl.", "client.id", "socket.", "broker.")


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
        self._conf = conf
        try:
            self._consumer = Consumer(conf)
        except KafkaException as exc:
            raise ObserverError(f"cannot create the Kafka consumer: {exc}") from exc
        self._topics: list[str] = []
        self._restarted_at = -_RESTART_EVERY_S
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
        self._topics = list(topics)
        self._consumer.subscribe(
            self._topics, on_assign=self._assign, on_revoke=self._revoke, on_lost=self._lost
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
            if self._fenced_itself(str(group), str(instance)):
                log.warning(
                    "Kafka: group %s: %s, but no other member holds the instance id %s (a commit "
                    "from before a rejoin fenced it): rejoining with a new consumer",
                    group,
                    reason,
                    instance,
                )
                self._restart()
                return
            raise ObserverError(
                f"Kafka: group {group}: {reason}. Another process runs with the same instance "
                f"id ({instance}; OBSERVER_INSTANCE_ID must be unique per running process, "
                "e.g. the pod name); this one gave its partitions up without committing and "
                "stops"
            )
        raise ObserverError(f"Kafka consumer fatal error (group {group}): {reason}")

    def _fenced_itself(self, group: str, instance: str) -> bool:
        """No live member of the group but this consumer holds `instance` (asked of the group
        coordinator); False when that cannot be told, or after a restart within a minute.

        A member that holds it may be gone already: a static member does not leave the group
        when it stops, the coordinator keeps it until its session ends (after a broker restart
        it can be this consumer's own membership from before its rejoin). So the question is
        asked again for two sessions; a process that really runs with the same id keeps its
        membership alive all that time."""
        now = time.monotonic()
        if now - self._restarted_at < _RESTART_EVERY_S:
            return False
        try:
            mine = self._consumer.memberid() or ""
        except (KafkaException, RuntimeError):
            mine = ""
        session_s = int(self._settings.get("session.timeout.ms", 45_000)) / 1000
        deadline = now + 2 * session_s
        while True:
            holders = instance_holders(self._settings, group, instance)
            if holders is not None and holders <= {mine}:
                return True
            if time.monotonic() >= deadline:
                return False
            log.info(
                "Kafka: group %s: instance id %s held by %s; asking again until that session ends",
                group,
                instance,
                sorted(holders) if holders is not None else "(cannot tell)",
            )
            time.sleep(min(1.0, session_s / 4))

    def _restart(self) -> None:
        """A new consumer in place of the fenced one, subscribed as it was (its partitions
        were reported lost: assigned again, they are read from their committed offsets)."""
        self._restarted_at = time.monotonic()
        try:
            self._consumer.close()  # revokes nothing to the listener: `_fatal` is still set
        except (KafkaException, RuntimeError) as exc:
            log.info("closing the fenced consumer: %s", exc)
        self._consumer = Consumer(self._conf)
        self._fatal = None
        if self._topics:
            self._consumer.subscribe(
                self._topics, on_assign=self._assign, on_revoke=self._revoke, on_lost=self._lost
            )

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
            return []  # (a restarted consumer: what the fenced one fetched is not ours)
        out: list[SourceRecord] = []
        append = out.append
        if self._values_only:
            for m in msgs:
                err = m.error()
                if err is not None:
                    self._message_error(err, m)
                    continue
                append(SourceRecord(m.topic(), m.partition(), m.offset(), None, m.value(), (), -1))
            if self._fatal is not None:  # a fatal message error
                self._give_up(self._fatal)
                return []
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
        if self._fatal is not None:  # a fatal message error
            self._give_up(self._fatal)
            return []
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
            return
        for m in msgs:
            err = m.error()
            if err is not None:
                self._message_error(err, m)
        if self._fatal is not None:
            self._give_up(self._fatal)

    def _message_error(self, err: KafkaError, m: Any) -> None:
        if err.code() in _QUIET:
            return
        if err.fatal() or err.code() == _FATAL:
            self._fatal = self._fatal or err.str()  # `poll` gives up once the batch is read
            return
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


def instance_holders(settings: Mapping[str, Any], group: str, instance: str) -> set[str] | None:
    """The member ids in `group` with the static instance id `instance`, as the group
    coordinator describes the group now; None when it does not answer within 5 s."""
    conf = {k: v for k, v in settings.items() if k.startswith(_CLIENT_PREFIXES)}
    try:
        admin = AdminClient(conf)
        described = admin.describe_consumer_groups([group], request_timeout=5)[group].result(6)
    except Exception as exc:  # KafkaException, a timeout: cannot tell
        log.warning("Kafka: cannot describe group %s: %s", group, exc)
        return None
    return {m.member_id for m in described.members if m.group_instance_id == instance}
