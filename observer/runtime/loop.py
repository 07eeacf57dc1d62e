"""The consumer loop. Each cycle runs the router (source topics -> keyed topic, `router.py`),
then the tracker: poll the keyed topic -> load state -> engine -> write -> publish -> commit,
and the deadline ticker between batches.

The tracker owns the shards whose keyed partitions the group assigned to this process: their
state, deadlines and outbox. On assignment it publishes what the shard's outbox still holds
(a previous owner may have died before publishing); on revocation it finishes the batch in
hand, flushes the producer, clears the acknowledged outbox entries and commits.

One thread runs the loop and owns the consumers, the producers and the store connection. A
batch's store write is sent without waiting; the loop reads the next batch and decodes it,
then reads the write's reply (pipelined with the next load), and only then publishes the
batch's records and lets its offsets be committed. Every `tick_interval_ms` the ticker fires,
per owned shard, the slots due at or before the shard's watermark (`keyed.py`).

Failures: a record whose processing raises goes to the dead-letter topic (the original record,
read again by its coordinates) and the loop goes on; a store failure stops progress (nothing
more is committed) and, once Redis answers again, the owned partitions are read again from
their committed offsets (`_recover`); records the producer could not deliver stay in the
outbox and are retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from observer.config import ObserverConfig
from observer.engine.core import Engine
from observer.engine.effects import Publish
from observer.engine.state import Event, KeySlot
from observer.errors import ObserverError, StoreError
from observer.flows.registry import FlowRegistry
from observer.ingest import AvroDecoder, Ingest, SourceRecord
from observer.metrics import Metrics
from observer.runtime.batch import BatchPlan, Cycle, dead_letter
from observer.runtime.cache import SlotCache
from observer.runtime.health import Health
from observer.runtime.keyed import Mark, Routed, ShardClocks, decode_keyed, encode_event
from observer.runtime.offsets import OffsetLedger, next_offsets
from observer.runtime.outbox import InFlight, OutboxRecord, decode_record
from observer.runtime.ports import (
    Clock,
    EventSource,
    Lease,
    Pending,
    RawSink,
    RecordSink,
    StateStore,
    WebhookSender,
    WriteBatch,
)
from observer.runtime.router import Router
from observer.runtime.shards import shard_of, slot_id, split_slot_id
from observer.runtime.watermark import TopicPartition, Watermarks

__all__ = ["Runtime"]

log = logging.getLogger(__name__)

_PROBE_EVERY_S = 5.0
_STATS_EVERY_S = 5.0
_SOURCES_EVERY_S = 10.0
_DEFER_FAILED_TIMER_MS = 60_000


@dataclass(slots=True)
class _Prepared:
    """A decoded batch of keyed records, ready to be run against the state."""

    routed: list[Routed | None]  # per keyed record (None: a mark or unreadable)
    items: list[tuple[int, str, Event]]  # record index, slot id, event
    slots: list[tuple[int, str]]  # (shard, slot id), unique, first-seen order
    offsets: dict[TopicPartition, int]


@dataclass(slots=True)
class _InWrite:
    reply: Pending[None]
    plan: BatchPlan
    prepared: _Prepared | None  # None for a tick
    touched: frozenset[str]  # slot ids the write changes (or leaves as they were)
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
        router_source: EventSource,
        router_sink: RawSink,
        store: StateStore,
        webhooks: WebhookSender,
        metrics: Metrics,
        health: Health,
        clock: Clock,
        deployed: Mapping[str, object] | None = None,
        avro: AvroDecoder | None = None,
        lease: Lease | None = None,
        backlog: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        topics = config.topics()
        self.topics = topics
        self.engine = Engine(registry, topics)
        self.ingest = Ingest(registry, topics, avro=avro)
        self.keyed_topic = config.keyed_topic_name()
        self.router = Router(
            config,
            self.ingest,
            source=router_source,
            sink=router_sink,
            metrics=metrics,
            clock=clock,
            keyed_topic=self.keyed_topic,
        )
        self.source = source
        self.sink = sink
        self.store = store
        self.webhooks = webhooks
        self.metrics = metrics
        self.health = health
        self.clock = clock
        self.deployed = dict(deployed or {})
        self.lease = lease
        # direct routing: records routed and not read by the tracker yet (held in memory);
        # the router reads no more while there are more than a few batches (and marks) of them
        self._backlog = backlog
        self.watermarks = Watermarks(config.idle_grace_ms)
        self.ledger = OffsetLedger()
        self.inflight = InFlight(config.retry_backoff_ms, 30_000)
        self.cache = SlotCache(config.slot_cache_size)
        self._stop = threading.Event()
        self._shards = config.shards
        self.owned: set[int] = set()
        self.clocks = ShardClocks()
        self._sources: frozenset[TopicPartition] = frozenset()
        self._next_sources = 0.0
        self._seq = 0
        self._pending: _InWrite | None = None
        # offsets of stored batches, committable once Redis has surely written them to disk
        self._durable: deque[tuple[float, dict[TopicPartition, int]]] = deque()
        self._published: Counter[str] = Counter()
        self._commit_requests: list[tuple[float, dict[TopicPartition, int]]] = []
        mono = time.monotonic()
        self._next_tick = mono
        self._next_commit = mono
        self._next_probe = mono
        self._next_stats = mono
        self._next_lease = mono
        self._marks_moved = False  # since the last tick
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
                break
            except StoreError as exc:
                self._store_failed(exc, "opening the state store")
        else:
            return False
        if self.lease is not None and not self._take_lease():
            return False
        self.webhooks.start()
        self.router.start()
        self.source.subscribe([self.keyed_topic], self)
        self._refresh_sources()
        self.health.kafka_ok = self.source.healthy() and self.router.source.healthy()
        self.health.started = True
        return True

    def _take_lease(self) -> bool:
        """`routing: direct`: wait until this process is the only one (a standby waits here)."""
        assert self.lease is not None
        said = 0.0
        while not self._stop.is_set():
            try:
                holder = self.lease.acquire()
            except StoreError as exc:
                self._store_failed(exc, "taking the lease of direct routing")
                continue
            if holder is None:
                self._next_lease = time.monotonic() + self.config.lease_ttl_ms / 3000.0
                log.info(
                    "direct routing: this process holds the lease of prefix %s",
                    self.config.key_prefix,
                )
                return True
            if time.monotonic() >= said:
                said = time.monotonic() + 60.0
                log.warning(
                    "direct routing runs one process per prefix and %s holds it; waiting as a "
                    "standby (to run several processes at once, use OBSERVER_ROUTING=keyed)",
                    holder,
                )
            self._stop.wait(min(1.0, self.config.lease_ttl_ms / 10000.0))
        return False

    def _renew_lease(self) -> None:
        if self.lease is None or time.monotonic() < self._next_lease:
            return
        self._next_lease = time.monotonic() + self.config.lease_ttl_ms / 3000.0
        try:
            held = self.lease.renew()
        except StoreError as exc:
            log.warning("direct routing: %s (kept; retrying)", exc)
            return
        if not held:
            raise ObserverError(
                f"direct routing: the lease of prefix {self.config.key_prefix} was lost to "
                "another process (this one was stalled for longer than OBSERVER_LEASE_TTL_MS); stopping"
            )

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
        # The router goes last: with direct routing the tracker's commit above is what
        # acknowledges the routed records, and so what lets their source offsets be committed.
        try:
            self.router.close(self.config.shutdown_timeout_ms / 1000.0)
        except Exception as exc:
            log.warning("router: %s", exc)
        self.source.close()
        self.webhooks.stop(1.0)
        self.sink.close()
        if self.lease is not None and self.started.is_set():
            try:
                self.lease.release()
            except StoreError as exc:
                log.warning("direct routing: %s (it expires by itself)", exc)
        self.store.close()
        log.info("stopped")

    # -- rebalance listener (called inside source.poll) ---------------------------------------------

    def assigned(self, tps: list[TopicPartition]) -> None:
        """Keyed partitions assigned: their shards are ours. Publish what their outboxes hold
        (a previous owner may have died before publishing); their watermarks come back with
        the marks read from the committed offset on."""
        self.cache.clear()
        shards = [p for _t, p in tps]
        self.watermarks.assign(tps, self.source.committed(tps))
        self.ledger.assign(tps)
        for s in shards:
            self.clocks.reset(s)
        self.owned.update(shards)
        self.metrics.rebalances.labels("tracker", "assigned").inc(len(tps))
        self.metrics.owned_shards.set(len(self.owned))
        log.info("tracker: assigned shards %s", _fmt_shards(shards))
        try:
            self._recover_outbox(shards)
        except StoreError as exc:
            self._recover(exc)

    def revoked(self, tps: list[TopicPartition]) -> None:
        """Keyed partitions taken away: finish and store the batch in hand, publish and clear
        the outbox as far as the broker acknowledges within the shutdown timeout, commit."""
        self.cache.clear()
        try:
            self._settle()
        except StoreError as exc:
            # What was in flight is read again from the committed offsets (partitions we keep
            # included), so nothing of it is committed by mistake below.
            self._recover(exc)
        self.sink.flush(self.config.shutdown_timeout_ms / 1000.0)
        try:
            self._write_acks()
        except StoreError as exc:
            log.warning("could not clear delivered records from the outbox (%s)", exc)
        self._release_durable(all_=True)
        final = self.ledger.revoke(tps)
        try:
            self.source.commit(final, wait=True)
        except Exception as exc:
            log.warning("final commit of revoked partitions failed: %s", exc)
        self._disown(tps)
        self.metrics.rebalances.labels("tracker", "revoked").inc(len(tps))
        log.info("tracker: revoked shards %s", _fmt_shards([p for _t, p in tps]))

    def lost(self, tps: list[TopicPartition]) -> None:
        self.cache.clear()
        self.ledger.lost(tps)
        self._disown(tps)
        self.metrics.rebalances.labels("tracker", "lost").inc(len(tps))
        log.warning("tracker: lost shards %s (not committing)", _fmt_shards([p for _t, p in tps]))

    def _disown(self, tps: list[TopicPartition]) -> None:
        self.watermarks.revoke(tps)
        for _t, p in tps:
            self.owned.discard(p)
            self.clocks.drop(p)
        self.metrics.owned_shards.set(len(self.owned))

    # -- the cycle ----------------------------------------------------------------------------------

    def _cycle(self) -> None:
        self.health.beat()
        half = self.config.poll_timeout_ms / 2000.0
        backlog = self._backlog
        read = backlog is None or backlog() < 4 * (self.config.batch_size + self._shards)
        routed = self.router.cycle(half, read)
        records = self.source.poll(self.config.batch_size, 0.0 if routed else half)
        try:
            if records:
                self._handle(records)
            # Deadlines are looked for as soon as a mark moved a watermark (so an alert does
            # not wait for the next tick too), and every TICK_INTERVAL_MS regardless.
            if self._marks_moved or time.monotonic() >= self._next_tick:
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
        self._renew_lease()

    def _handle(self, records: list[SourceRecord]) -> None:
        t0 = time.perf_counter()
        prepared = self._prepare(records)
        cached: dict[str, tuple[KeySlot, bytes]] = {}
        misses: list[tuple[int, str]] = []
        absent: list[tuple[int, str]] = []
        get = self.cache.get
        for shard, sid in prepared.slots:
            hit = get(sid)
            if hit is None:
                misses.append((shard, sid))
            elif hit[0] is None:
                absent.append((shard, sid))
            else:
                cached[sid] = hit
        # Loads go over their own connection, so they are not queued behind the previous
        # batch's write and this batch is planned while Redis applies that one. A slot that
        # write touched is normally cached (its state, or absent); if one is not (evicted, or
        # the cache was cleared since), the write is waited for before it is loaded.
        pending = self._pending
        if misses and pending is not None and not pending.touched.isdisjoint(s for _, s in misses):
            self._settle()
        raw = self.store.load(misses).result() if misses else []
        if absent:
            misses += absent
            raw = [*raw, *([None] * len(absent))]
        plan = self._plan(prepared, cached, misses, raw)
        self._settle()
        acked = self.inflight.take_acked()
        plan.write.outbox_dels.extend(acked)
        try:
            reply = self.store.write(plan.write)
        except StoreError:
            self.inflight.restore_acked(acked)
            raise
        touched = frozenset(sid for sid, _slot, _stored in plan.states)
        self._pending = _InWrite(reply, plan, prepared, touched, acked)
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)

    def _prepare(self, records: list[SourceRecord]) -> _Prepared:
        """Decode keyed records: events become items of their shard's slots, marks advance
        the shard's watermark (they were read after every event they cover)."""
        items: list[tuple[int, str, Event]] = []
        routed: list[Routed | None] = []
        seen: set[str] = set()
        slots: list[tuple[int, str]] = []
        owned = self.owned
        clocks = self.clocks
        shards = self._shards
        for i, rec in enumerate(records):
            shard = rec.partition
            if shard not in owned:  # a record fetched just before a revocation
                routed.append(None)
                continue
            try:
                r = decode_keyed(rec.value)
            except (ValueError, TypeError) as exc:
                log.error(
                    "keyed record %s[%d]@%d is not one the router writes (%s); skipped",
                    rec.topic,
                    rec.partition,
                    rec.offset,
                    exc,
                )
                self.metrics.processing_errors.labels("keyed").inc()
                routed.append(None)
                continue
            if isinstance(r, Mark):
                if clocks.observe(shard, r):
                    self._marks_moved = True
                routed.append(None)
                continue
            sid = slot_id(r.flow, r.event.key)
            if shard_of(sid, shards) != shard:
                log.error(
                    "keyed record %s[%d]@%d belongs to shard %d; skipped",
                    rec.topic,
                    rec.partition,
                    rec.offset,
                    shard_of(sid, shards),
                )
                self.metrics.processing_errors.labels("keyed").inc()
                routed.append(None)
                continue
            routed.append(r)
            if sid not in seen:
                seen.add(sid)
                slots.append((shard, sid))
            items.append((i, sid, r.event))
        offsets = next_offsets((r.topic, r.partition, r.offset) for r in records)
        return _Prepared(routed, items, slots, offsets)

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
    ) -> BatchPlan:
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
                flow, key = split_slot_id(sid)
                log.exception(
                    "processing %s %s failed; the record goes to the dead-letter topic",
                    ev.type,
                    ev.id,
                    extra={"flow": flow, "key": key},
                )
                self.metrics.processing_errors.labels("apply").inc()
                failed.setdefault(i, f"processing failed: {type(exc).__name__}: {exc}")
        if failed:
            dead = [(r, reason) for i, reason in failed.items() if (r := prepared.routed[i])]
            originals = self.router.source.fetch(
                [(r.topic, r.partition, r.offset) for r, _ in dead]
            )
            for r, reason in dead:
                cycle.publish(
                    self._dead_letter(r, reason, originals),
                    shard=shard_of(slot_id(r.flow, r.event.key), self._shards),
                )
        plan = cycle.finish()
        self._seq = plan.next_seq
        self._cache_states(plan)
        return plan

    def _dead_letter(
        self, r: Routed, reason: str, originals: Mapping[tuple[str, int, int], SourceRecord]
    ) -> Publish:
        """The dead letter of an event that failed past routing: its source record read again
        (or, if that is gone, the event as routed, with the same headers)."""
        original = originals.get((r.topic, r.partition, r.offset))
        if original is None:
            original = SourceRecord(
                r.topic,
                r.partition,
                r.offset,
                r.event.key.encode("utf-8", "surrogatepass"),
                encode_event(r.flow, r.event, r.topic, r.partition, r.offset),
                (),
                r.event.time,
            )
        return dead_letter(original, reason, self.topics)

    def _cache_states(self, plan: BatchPlan) -> None:
        put = self.cache.put
        for sid, slot, stored in plan.states:
            put(sid, slot, stored)  # None: the write leaves nothing stored for it

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
            self._durable.append(
                (time.monotonic() + self.config.commit_delay_ms / 1000.0, pending.prepared.offsets)
            )

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

    def _recover_outbox(self, shards: Sequence[int]) -> None:
        """Publish again whatever the shards' outboxes still hold (a crash, a lost connection,
        a previous owner)."""
        found: list[tuple[int, OutboxRecord]] = []
        for shard, oid, data in self.store.outbox(shards):
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

    def _release_durable(self, all_: bool = False) -> None:
        """Offsets whose write is `commit_delay_ms` old become committable (`all_`: wait until
        the newest is, for a final commit)."""
        durable = self._durable
        if all_ and durable:
            # A final commit waits too, but stopping waits at most 2 s: Redis' `everysec` has
            # written its last second to disk by then, whatever the configured delay.
            wait = max(0.0, durable[-1][0] - time.monotonic())
            time.sleep(min(wait, 2.0) if self.stopping else wait)
        now = time.monotonic()
        while durable and (all_ or durable[0][0] <= now):
            self.ledger.written(durable.popleft()[1])

    def _commit(self, wait: bool) -> None:
        self._next_commit = time.monotonic() + self.config.commit_interval_ms / 1000.0
        self._release_durable(all_=wait)
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

    def _refresh_sources(self) -> None:
        """Every partition of every source topic: a shard's watermark needs a mark for each."""
        self._next_sources = time.monotonic() + _SOURCES_EVERY_S
        counts = self.router.source.partitions(self.ingest.topic_names())
        if counts is None:
            return
        sources = frozenset((t, p) for t, n in counts.items() for p in range(n))
        if sources != self._sources:
            log.info(
                "source partitions: %s", ", ".join(f"{t}[{n}]" for t, n in sorted(counts.items()))
            )
            self._sources = sources

    def _watermarks(self) -> list[tuple[int, int]]:
        """(shard, watermark) of each owned shard whose watermark is known."""
        if time.monotonic() >= self._next_sources:
            self._refresh_sources()
        sources = self._sources
        out = []
        for shard in sorted(self.owned):
            wm = self.clocks.value(shard, sources)
            if wm is not None:
                out.append((shard, wm))
        low = min((wm for _s, wm in out), default=None)
        self.health.watermark = low if len(out) == len(self.owned) else None
        if low is not None:
            self.metrics.watermark.set(low / 1000.0)
        wms = self.watermarks
        for tp, (lo, hi, pos) in self.source.offsets(list(wms.partitions)).items():
            wms.offsets(tp, lo, hi, pos)
        return out

    def _tick(self) -> None:
        self._next_tick = time.monotonic() + self.config.tick_interval_ms / 1000.0
        self._marks_moved = False
        marks = self._watermarks()
        if not marks:
            self._write_acks()
            return
        by_shard = dict(marks)
        due = self.store.due(marks, self.config.tick_limit)
        self.health.overdue_ms = due.overdue_ms or 0
        self.metrics.overdue.set((due.overdue_ms or 0) / 1000.0)
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
            wm = by_shard[shard]
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
        """The store failed: reconnect (with backoff), then read the owned partitions again
        from their committed offsets and republish the owned shards' outboxes.

        Re-reading covers every batch whose write was lost, including writes Redis confirmed
        but lost in a crash (AOF `everysec`): offsets are committed only `commit_delay_ms`
        after their write, so the committed offsets never run ahead of what Redis kept.
        Events read again are recognised by the engine and change nothing twice."""
        self.cache.clear()  # the store may not hold what the cache does
        if self._pending is not None:
            self.inflight.restore_acked(self._pending.acked)
            self._pending = None
        doing = "writing a batch"
        while not self._stop.is_set():
            self._store_failed(exc, doing)
            try:
                self.store.reconnect()
                self._rewind()
                self._recover_outbox(sorted(self.owned))
                self._store_ok()
                log.info("state store is back; reading again from the committed offsets")
                return
            except StoreError as again:
                self.cache.clear()
                exc = again
                doing = "reconnecting"
        log.error("stopping while the state store is down (%s): nothing more is committed", exc)

    def _rewind(self) -> None:
        """Seek every owned partition back to its committed offset; forget what was processed
        since, and the shards' watermarks (they come back with the marks read again)."""
        tps = sorted(self.ledger.assigned)
        self._durable.clear()
        if not tps:
            return
        committed = self.source.committed(tps)
        self.source.seek({tp: committed.get(tp, -2) for tp in tps})
        self.ledger.lost(tps)
        self.ledger.assign(tps)
        for _t, shard in tps:
            self.clocks.reset(shard)

    def _health_checks(self) -> None:
        mono = time.monotonic()
        healthy = self.source.healthy() and self.router.source.healthy()
        if not healthy and mono >= self._next_probe:
            self._next_probe = mono + _PROBE_EVERY_S
            healthy = self.source.probe(1.0) and self.router.source.probe(1.0)
        self.health.kafka_ok = healthy
        self.health.lag = self.router.lag() + sum(
            st.lag() or 0 for st in self.watermarks.partitions.values()
        )
        self.metrics.outbox_depth.set(len(self.inflight))
        if mono >= self._next_stats:
            self._next_stats = mono + _STATS_EVERY_S
            self.metrics.ready.set(1 if self.health.report()["ready"] else 0)
            try:
                self.metrics.set_open(self.store.stats())
            except StoreError as exc:
                self._recover(exc)


def _fmt_shards(shards: Sequence[int]) -> str:
    return ", ".join(str(s) for s in sorted(shards))
