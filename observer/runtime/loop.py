"""The consumer loop: poll -> decode -> load state -> engine -> write -> publish -> commit, and
the deadline ticker between batches.

One thread runs the loop and owns the consumer, the producer and the store connection. A
batch's store write is sent without waiting; the loop reads the next batch and decodes it,
then reads the write's reply (pipelined with the next load), and only then publishes the
batch's records and lets its offsets be committed. Every `tick_interval_ms` the ticker fires
the slots due at or before the watermark and writes them like a batch.

Failures: a record whose processing raises goes to the dead-letter topic and the loop goes
on; a store failure stops progress (nothing more is committed) and the batch in hand is
retried with backoff after reconnecting; records the producer could not deliver stay in the
outbox and are retried.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from observer.config import ObserverConfig
from observer.engine.core import Engine
from observer.engine.effects import Publish
from observer.engine.state import Event, KeySlot
from observer.errors import StoreError
from observer.flows.registry import FlowRegistry
from observer.ingest import AvroDecoder, Ingest, SourceRecord
from observer.metrics import Metrics
from observer.runtime.batch import BatchPlan, Cycle, dead_letter
from observer.runtime.cache import SlotCache
from observer.runtime.health import Health
from observer.runtime.offsets import OffsetLedger, next_offsets
from observer.runtime.outbox import InFlight, OutboxRecord, decode_record
from observer.runtime.ports import (
    Clock,
    EventSource,
    Pending,
    RecordSink,
    StateStore,
    WebhookSender,
    WriteBatch,
)
from observer.runtime.shards import shard_of, slot_id, split_slot_id
from observer.runtime.watermark import TopicPartition, Watermarks

__all__ = ["Runtime"]

log = logging.getLogger(__name__)

_PROBE_EVERY_S = 5.0
_STATS_EVERY_S = 5.0
_DEFER_FAILED_TIMER_MS = 60_000


@dataclass(slots=True)
class _Prepared:
    """A decoded batch, ready to be run against the state (and re-run after a store failure)."""

    records: list[SourceRecord]
    items: list[tuple[int, str, Event]]  # record index, slot id, event
    slots: list[tuple[int, str]]  # (shard, slot id), unique, first-seen order
    dead: list[Publish]
    outcomes: Counter[tuple[str, str]]
    offsets: dict[TopicPartition, int]


@dataclass(slots=True)
class _InWrite:
    reply: Pending[None]
    plan: BatchPlan
    prepared: _Prepared | None  # None for a tick
    outcomes: Counter[tuple[str, str]]  # records by (topic, outcome)
    acked: list[tuple[int, str]] = field(default_factory=list)


class Runtime:
    """Runs deployed flows against Kafka with state in the store until `stop()`."""

    def __init__(
        self,
        config: ObserverConfig,
        registry: FlowRegistry,
        *,
        source: EventSource,
        sink: RecordSink,
        store: StateStore,
        webhooks: WebhookSender,
        metrics: Metrics,
        health: Health,
        clock: Clock,
        deployed: Mapping[str, object] | None = None,
        avro: AvroDecoder | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        topics = config.topics()
        self.topics = topics
        self.engine = Engine(registry, topics)
        self.ingest = Ingest(registry, topics, avro=avro)
        self.source = source
        self.sink = sink
        self.store = store
        self.webhooks = webhooks
        self.metrics = metrics
        self.health = health
        self.clock = clock
        self.deployed = dict(deployed or {})
        self.store_prefix = config.key_prefix
        self.watermarks = Watermarks(config.idle_grace_ms)
        self.ledger = OffsetLedger()
        self.inflight = InFlight(config.retry_backoff_ms, 30_000)
        self.cache = SlotCache(config.slot_cache_size)
        self._stop = threading.Event()
        self._shards = config.shards
        self._seq = 0
        self._pending: _InWrite | None = None
        # decoded batches whose write failed before it was sent
        self._unfinished: list[_Prepared] = []
        self._published: Counter[str] = Counter()
        self._commit_requests: list[tuple[float, dict[TopicPartition, int]]] = []
        mono = time.monotonic()
        self._next_tick = mono
        self._next_commit = mono
        self._next_probe = mono
        self._next_stats = mono
        self._instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._conflict_logged = 0.0
        self._other_since: tuple[str, float] | None = None
        self._store_backoff_s = 0.1
        self.started = threading.Event()
        self.stopped = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, flush, commit and return (thread-safe)."""
        self.health.stopping = True
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def sleep(self, seconds: float) -> bool:
        """Wait, waking up early on `stop()`; True if stopping."""
        return self._stop.wait(seconds)

    def run(self) -> None:
        """Run until `stop()`. Raises ConfigError/ObserverError on a fatal problem."""
        try:
            if not self._startup():
                return
            self.started.set()
            while not self._stop.is_set():
                self._cycle()
        finally:
            try:
                self._shutdown()
            finally:
                self.stopped.set()

    def _startup(self) -> bool:
        while not self._stop.is_set():
            try:
                self.store.open(self._shards, self.deployed)
                self._store_ok()
                self._recover_outbox()
                break
            except StoreError as exc:
                self._store_failed(exc, "opening the state store")
        else:
            return False
        self.webhooks.start()
        self.source.subscribe(self.ingest.topic_names(), self)
        self.health.kafka_ok = self.source.healthy()
        self.health.started = True
        return True

    def _shutdown(self) -> None:
        log.info("stopping: finishing the batch in hand, flushing, committing")
        try:
            self._settle()
        except StoreError as exc:
            log.error("the last batch was not stored (%s): its offsets are not committed", exc)
            self._pending = None
        remaining = self.sink.flush(self.config.shutdown_timeout_ms / 1000.0)
        if remaining:
            log.warning(
                "%d records not acknowledged at shutdown; they stay in the outbox", remaining
            )
        self._collect_webhooks()
        acked = self.inflight.take_acked()
        if acked:
            try:
                self.store.write(WriteBatch(outbox_dels=acked)).result()
            except StoreError as exc:
                log.warning(
                    "could not clear %d delivered records from the outbox (%s); they will be published again",
                    len(acked),
                    exc,
                )
        self._commit(wait=True)
        self.source.close()
        self.webhooks.stop(1.0)
        self.sink.close()
        with contextlib.suppress(StoreError):
            self.store.release(self._instance_id)
        self.store.close()
        log.info("stopped")

    # -- rebalance listener (called inside source.poll) ---------------------------------------------

    def assigned(self, tps: list[TopicPartition]) -> None:
        self.cache.clear()
        committed = self.source.committed(tps)
        self.watermarks.assign(tps, committed)
        self.ledger.assign(tps)
        log.info("assigned %s", _fmt_tps(tps))

    def revoked(self, tps: list[TopicPartition]) -> None:
        self.cache.clear()
        try:
            self._settle()
        except StoreError as exc:
            # Redo what is in flight before giving the partitions up (the batch may hold
            # records of partitions we keep, whose later offsets must not be committed first).
            self._recover(exc)
        final = self.ledger.revoke(tps)
        try:
            self.source.commit(final, wait=True)
        except Exception as exc:
            log.warning("final commit of revoked partitions failed: %s", exc)
        self.watermarks.revoke(tps)
        self.metrics.forget_partitions(tps)
        log.info("revoked %s", _fmt_tps(tps))

    def lost(self, tps: list[TopicPartition]) -> None:
        self.cache.clear()
        self.ledger.lost(tps)
        self.watermarks.revoke(tps)
        self.metrics.forget_partitions(tps)
        log.warning("lost %s (not committing)", _fmt_tps(tps))

    # -- the cycle ----------------------------------------------------------------------------------

    def _cycle(self) -> None:
        self.health.beat()
        records = self.source.poll(self.config.batch_size, self.config.poll_timeout_ms / 1000.0)
        try:
            if records:
                self._handle(records)
            if time.monotonic() >= self._next_tick:
                self._settle()
                self._tick()
        except StoreError as exc:
            self._recover(exc)
        self.sink.poll(0)
        self._collect_webhooks()
        self._retry_publishes()
        if time.monotonic() >= self._next_commit:
            self._commit(wait=False)
        self._flush_published()
        self._health_checks()

    def _handle(self, records: list[SourceRecord]) -> None:
        t0 = time.perf_counter()
        prepared = self._prepare(records)
        cached: dict[str, tuple[KeySlot, bytes]] = {}
        misses: list[tuple[int, str]] = []
        for shard, sid in prepared.slots:
            hit = self.cache.get(sid)
            if hit is None:
                misses.append((shard, sid))
            else:
                cached[sid] = hit
        try:
            # answered after the previous batch's write (one connection, in order)
            raw = self.store.load(misses).result() if misses else []
        except StoreError:
            self._unfinished.append(prepared)
            raise
        # Plan this batch before waiting for the previous write: cached slots need no load,
        # so the engine's work overlaps with Redis applying the previous batch.
        plan, outcomes = self._plan(prepared, cached, misses, raw)
        try:
            self._settle()
        except StoreError:
            self._unfinished.append(prepared)
            raise
        acked = self.inflight.take_acked()
        plan.write.outbox_dels.extend(acked)
        try:
            reply = self.store.write(plan.write)
        except StoreError:
            self.inflight.restore_acked(acked)
            self._unfinished.append(prepared)
            raise
        self._pending = _InWrite(reply, plan, prepared, outcomes, acked)
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)

    def _prepare(self, records: list[SourceRecord]) -> _Prepared:
        items: list[tuple[int, str, Event]] = []
        dead: list[Publish] = []
        outcomes: Counter[tuple[str, str]] = Counter()
        seen: dict[str, int] = {}
        slots: list[tuple[int, str]] = []
        observe = self.watermarks.observe
        decode = self.ingest.decode
        shards = self._shards
        for i, rec in enumerate(records):
            observe(rec.topic, rec.partition, rec.offset, rec.timestamp)
            try:
                d = decode(rec)
            except Exception as exc:
                log.exception("cannot decode record", extra=_ctx(rec))
                dead.append(
                    dead_letter(rec, f"cannot decode: {type(exc).__name__}: {exc}", self.topics)
                )
                outcomes[(rec.topic, "dead_letter")] += 1
                self.metrics.processing_errors.labels("decode").inc()
                continue
            if d.dead_letter is not None:
                dead.append(d.dead_letter)
                outcomes[(rec.topic, "dead_letter")] += 1
                continue
            if not d.events:
                outcomes[(rec.topic, "ignored")] += 1
                continue
            outcomes[(rec.topic, "applied")] += 1
            for flow, ev in d.events:
                sid = slot_id(flow, ev.key)
                if sid not in seen:
                    seen[sid] = len(slots)
                    slots.append((shard_of(sid, shards), sid))
                items.append((i, sid, ev))
        offsets = next_offsets((r.topic, r.partition, r.offset) for r in records)
        return _Prepared(records, items, slots, dead, outcomes, offsets)

    def _new_cycle(self, now: int) -> Cycle:
        shards = self._shards
        return Cycle(
            self.engine,
            lambda sid: shard_of(sid, shards),
            now,
            seq=self._seq,
            history_cap=self.config.history_cap,
            ttl_slack_ms=self.config.ttl_slack_ms,
        )

    def _plan(
        self,
        prepared: _Prepared,
        cached: Mapping[str, tuple[KeySlot, bytes]],
        loaded: Sequence[tuple[int, str]],
        raw: Sequence[bytes | None],
    ) -> tuple[BatchPlan, Counter[tuple[str, str]]]:
        cycle = self._new_cycle(self.clock.now_ms())
        for shard, sid in prepared.slots:
            hit = cached.get(sid)
            if hit is not None:
                cycle.adopt(sid, shard, hit[0], hit[1])
        for (shard, sid), data in zip(loaded, raw, strict=True):
            flow, key = split_slot_id(sid)
            if not cycle.load(sid, flow, key, shard, data):
                log.error(
                    "stored state of %s cannot be decoded; its events go to the dead-letter topic",
                    sid,
                    extra={"flow": flow, "key": key},
                )
        failed: dict[int, str] = {}
        for i, sid, ev in prepared.items:
            try:
                cycle.apply(sid, ev)
            except Exception as exc:
                rec = prepared.records[i]
                flow, key = split_slot_id(sid)
                log.exception(
                    "processing %s %s failed; the record goes to the dead-letter topic",
                    ev.type,
                    ev.id,
                    extra={**_ctx(rec), "flow": flow, "key": key},
                )
                self.metrics.processing_errors.labels("apply").inc()
                failed.setdefault(i, f"processing failed: {type(exc).__name__}: {exc}")
        for p in prepared.dead:
            cycle.publish(p)
        outcomes = Counter(prepared.outcomes)
        for i, reason in failed.items():
            rec = prepared.records[i]
            cycle.publish(dead_letter(rec, reason, self.topics))
            outcomes[(rec.topic, "applied")] -= 1
            outcomes[(rec.topic, "dead_letter")] += 1
        plan = cycle.finish()
        self._seq = plan.next_seq
        self._cache_states(plan)
        return plan, outcomes

    def _cache_states(self, plan: BatchPlan) -> None:
        for sid, slot, stored in plan.states:
            if slot is None or stored is None:
                self.cache.drop(sid)
            else:
                self.cache.put(sid, slot, stored)

    def _settle(self) -> None:
        """Wait for the write in flight; then publish its records and mark its offsets."""
        pending = self._pending
        if pending is None:
            return
        try:
            pending.reply.result()
        except StoreError:
            self.inflight.restore_acked(pending.acked)
            raise
        self._pending = None
        self._after_write(pending.plan)
        if pending.prepared is not None:
            self.ledger.written(pending.prepared.offsets)
            self.metrics.record_events(pending.outcomes)

    def _after_write(self, plan: BatchPlan) -> None:
        self._publish(plan.records)
        self.metrics.record_signals(plan.signals)
        self.metrics.record_latencies(plan.latencies)

    # -- publishing ---------------------------------------------------------------------------------

    def _publish(self, records: Sequence[tuple[int, OutboxRecord]]) -> None:
        for shard, rec in records:
            self.inflight.sent(shard, rec)
            if rec.webhook is not None:
                self.webhooks.submit(shard, rec)
            else:
                self.sink.send(rec, self._on_delivery)

    def _on_delivery(self, oid: str, error: str | None) -> None:
        if error is None:
            rec = self.inflight.record(oid)
            if rec is not None:
                self._published[rec.category] += 1
            self.inflight.delivered(oid)
            return
        rec = self.inflight.record(oid)
        category = rec.category if rec is not None else "?"
        self.metrics.publish_failures.labels(category).inc()
        retry_at = self.inflight.failed(oid, self.clock.now_ms())
        log.warning(
            "delivery of %s record %s failed (%s); retrying at %s",
            category,
            oid,
            error,
            retry_at,
            extra={"observer_id": oid},
        )

    def _retry_publishes(self) -> None:
        due = self.inflight.due_retries(self.clock.now_ms())
        for shard, rec in due:
            if rec.webhook is not None:
                self.webhooks.submit(shard, rec)
            else:
                self.sink.send(rec, self._on_delivery)

    def _collect_webhooks(self) -> None:
        for _shard, oid, ok in self.webhooks.take_done():
            if ok:
                self._published["webhook"] += 1
            else:
                self.metrics.webhooks_given_up.inc()
            self.inflight.delivered(oid)

    def _flush_published(self) -> None:
        if self._published:
            for cat, n in self._published.items():
                self.metrics.published.labels(cat).inc(n)
            self._published.clear()

    def _recover_outbox(self) -> None:
        """Publish again whatever the outbox still holds (a crash, a lost connection)."""
        found: list[tuple[int, OutboxRecord]] = []
        for shard, oid, data in self.store.outbox():
            if oid in self.inflight:
                continue
            try:
                found.append((shard, decode_record(data)))
            except ValueError as exc:
                log.error("outbox entry %s cannot be decoded (%s); left in place", oid, exc)
        if found:
            found.sort(key=lambda x: (x[1].created_at, x[1].seq))
            log.info("publishing %d records left in the outbox", len(found))
            self._publish(found)

    # -- commits ------------------------------------------------------------------------------------

    def _commit(self, wait: bool) -> None:
        self._next_commit = time.monotonic() + self.config.commit_interval_ms / 1000.0
        offsets = self.ledger.to_commit()
        if not offsets:
            return
        self.ledger.committing(offsets)
        t0 = time.monotonic()
        try:
            self.source.commit(offsets, wait=wait)
        except Exception as exc:
            self.ledger.commit_failed(offsets)
            log.warning("commit failed: %s", exc)
            return
        if wait:
            self.metrics.commit_seconds.observe(time.monotonic() - t0)
        else:
            self._commit_requests.append((t0, offsets))

    def commit_done(self, error: str | None, offsets: dict[TopicPartition, int]) -> None:
        """A commit was confirmed or failed (called inside source.poll)."""
        for i, (t0, requested) in enumerate(self._commit_requests):
            if requested == offsets:
                del self._commit_requests[i]
                if error is None:
                    self.metrics.commit_seconds.observe(time.monotonic() - t0)
                break
        if error is not None:
            self.ledger.commit_failed(offsets)
            log.warning("commit failed: %s", error)

    # -- deadlines ----------------------------------------------------------------------------------

    def _watermark(self) -> int | None:
        now = self.clock.now_ms()
        wms = self.watermarks
        for tp, (low, high, pos) in self.source.offsets(list(wms.partitions)).items():
            wms.offsets(tp, low, high, pos)
        wm = wms.value(now)
        self.health.watermark = wm
        self.metrics.set_lag({tp: st.lag() for tp, st in wms.partitions.items()})
        if wm is not None:
            self.metrics.watermark.set(wm / 1000.0)
        return wm

    def _tick(self) -> None:
        self._next_tick = time.monotonic() + self.config.tick_interval_ms / 1000.0
        wm = self._watermark()
        if wm is None:
            self._write_acks()
            return
        due = self.store.due(wm, self.config.tick_limit)
        self.metrics.overdue.set(
            max(0, wm - due.earliest) / 1000.0 if due.earliest is not None else 0
        )
        if not due.slots:
            self._write_acks()
            return
        now = self.clock.now_ms()
        cycle = self._new_cycle(now)
        names = set(self.registry.names())
        for shard, sid, raw in due.slots:
            flow, key = split_slot_id(sid)
            if raw is None:
                cycle.forget_due(shard, sid)
                continue
            if flow not in names:
                log.warning(
                    "slot %s belongs to flow %r, which is not deployed: its timers are dropped",
                    sid,
                    flow,
                )
                cycle.forget_due(shard, sid)
                continue
            if not cycle.load(sid, flow, key, shard, raw):
                log.error(
                    "stored state of %s cannot be decoded; its timers are dropped",
                    sid,
                    extra={"flow": flow, "key": key},
                )
                cycle.forget_due(shard, sid)
                continue
            try:
                cycle.fire(sid, wm)
            except Exception:
                log.exception(
                    "firing timers of %s failed; retrying in %ds",
                    sid,
                    _DEFER_FAILED_TIMER_MS // 1000,
                    extra={"flow": flow, "key": key},
                )
                self.metrics.processing_errors.labels("timer").inc()
                cycle.defer(sid, wm + _DEFER_FAILED_TIMER_MS)
        plan = cycle.finish()
        self._seq = plan.next_seq
        self._cache_states(plan)
        acked = self.inflight.take_acked()
        plan.write.outbox_dels.extend(acked)
        try:
            self.store.write(plan.write).result()
        except StoreError:
            self.inflight.restore_acked(acked)
            raise
        self._after_write(plan)
        if len(due.slots) >= self.config.tick_limit:
            self._next_tick = time.monotonic()  # more are due: tick again right after the next poll

    def _write_acks(self) -> None:
        acked = self.inflight.take_acked()
        if not acked:
            return
        try:
            self.store.write(WriteBatch(outbox_dels=acked)).result()
        except StoreError:
            self.inflight.restore_acked(acked)
            raise

    # -- failures and health ------------------------------------------------------------------------

    def _store_ok(self) -> None:
        self.health.redis_ok = True
        self.health.redis_error = None
        self._store_backoff_s = 0.1

    def _store_failed(self, exc: Exception, doing: str) -> None:
        self.health.redis_ok = False
        self.health.redis_error = str(exc)
        self.metrics.store_errors.inc()
        log.error(
            "state store failed while %s: %s; retrying in %.1fs", doing, exc, self._store_backoff_s
        )
        self._stop.wait(self._store_backoff_s)
        self._store_backoff_s = min(self._store_backoff_s * 2, 5.0)

    def _recover(self, exc: StoreError) -> None:
        """The store failed mid-batch: reconnect, republish the outbox, redo the batches whose
        write was not confirmed, synchronously. Nothing is committed until they are stored."""
        self.cache.clear()  # the store may not hold what the cache does
        redo: list[_Prepared] = []
        if self._pending is not None:
            self.inflight.restore_acked(self._pending.acked)
            if self._pending.prepared is not None:
                redo.append(self._pending.prepared)
            self._pending = None
        redo.extend(self._unfinished)
        self._unfinished = []
        doing = "writing a batch"
        while not self._stop.is_set():
            self._store_failed(exc, doing)
            try:
                self.store.reconnect()
                self._recover_outbox()
                for prepared in redo:
                    raw = self.store.load(prepared.slots).result()
                    plan, outcomes = self._plan(prepared, {}, prepared.slots, raw)
                    self.store.write(plan.write).result()
                    self._after_write(plan)
                    self.ledger.written(prepared.offsets)
                    self.metrics.record_events(outcomes)
                self._store_ok()
                log.info("state store is back (%d batches redone)", len(redo))
                return
            except StoreError as again:
                self.cache.clear()
                exc = again
                doing = "reconnecting"
        log.error(
            "stopping while the state store is down (%s): %d batches are not stored and not committed",
            exc,
            len(redo),
        )

    def _health_checks(self) -> None:
        mono = time.monotonic()
        healthy = self.source.healthy()
        if not healthy and mono >= self._next_probe:
            self._next_probe = mono + _PROBE_EVERY_S
            healthy = self.source.probe(1.0)
        self.health.kafka_ok = healthy
        self.metrics.outbox_depth.set(len(self.inflight))
        if mono >= self._next_stats:
            self._next_stats = mono + _STATS_EVERY_S
            try:
                self.metrics.set_open(self.store.stats())
                self._check_alone()
            except StoreError as exc:
                self._recover(exc)

    def _check_alone(self) -> None:
        """Until shards are handed to processes (issue #5), one process per key prefix: a
        second one would fire deadlines twice and overwrite state the other one changed. A
        lease held by another id for longer than its TTL means that process is alive."""
        ttl_ms = int(_STATS_EVERY_S * 3000)
        other = self.store.claim(self._instance_id, ttl_ms)
        mono = time.monotonic()
        if other is None:
            self._other_since = None
            self.metrics.prefix_conflict.set(0)
            return
        if self._other_since is None or self._other_since[0] != other:
            self._other_since = (other, mono)
            return
        if mono - self._other_since[1] < ttl_ms / 1000.0:
            return  # maybe a process that just stopped: its lease runs out
        self.metrics.prefix_conflict.set(1)
        if mono - self._conflict_logged > 60:
            self._conflict_logged = mono
            log.error(
                "another observer process (%s) runs on key prefix %r: this version supports one "
                "process per prefix; state may be overwritten and deadlines fire twice",
                other,
                self.store_prefix,
            )


def _ctx(rec: SourceRecord) -> dict[str, Any]:
    return {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset}


def _fmt_tps(tps: Sequence[TopicPartition]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps))
