"""`Tracker`, stage two: the keyed partitions this process owns -> state, deadlines, records.

Partition s of the keyed topic is shard s (`keyed.py`); the tracker owns the shards whose
partitions the group `<GROUP_ID>.keyed` assigned to this process, and with them their slots,
deadlines and outbox in the store. Per batch of keyed records:

1. decode: events become items of their slots; marks advance their shard's watermark;
2. slots come from the cache of slots this process wrote, the rest are loaded in one request;
3. the engine applies the events, and the batch is planned into one write (`batch.py`);
4. the previous batch's write is settled (records published, offsets queued until durable:
   `writes.py`) and this one is sent, read by the next turn (or an idle turn, or a tick).

Deadlines are fired by the `DeadlineTicker` as soon as a mark moved a watermark, and every
`tick_interval_ms`; records go out through the `Publisher`; offsets are committed by the
shared `OffsetCommits`. On assignment the tracker publishes what the shards' outboxes still
hold (a previous owner may have died before publishing); on revocation it settles the batch
in hand, flushes the producer, clears the acknowledged outbox entries and commits. When the
store fails it serves its consumer (rebalances go on) until the store answers, then reads the
owned partitions again from their committed offsets (`recover`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from observer.config import ObserverConfig
from observer.engine.core import Engine, VersionUnavailable
from observer.engine.effects import Hop
from observer.engine.state import Event, KeySlot
from observer.errors import ObserverError, StoreError
from observer.flows.registry import FlowRegistry
from observer.ingest import SourceRecord
from observer.metrics import Metrics
from observer.runtime.batch import BatchPlan, Planning
from observer.runtime.cache import SlotCache
from observer.runtime.commits import OffsetCommits
from observer.runtime.deadlines import DeadlineTicker
from observer.runtime.deployments import UnavailableVersions
from observer.runtime.due_bounds import DueBounds
from observer.runtime.every import Every
from observer.runtime.guards import GuardDecider
from observer.runtime.health import Health
from observer.runtime.hops import hop_marks
from observer.runtime.keyed import (
    Routed,
    ShardWatermarks,
    decode_keyed,
    routed_dead_letter,
)
from observer.runtime.offsets import next_offsets
from observer.runtime.outage import StoreOutage
from observer.runtime.ports import RuntimePorts
from observer.runtime.publisher import Publisher
from observer.runtime.shards import fmt_shards, shard_of, slot_id, split_slot_id
from observer.runtime.tally import MinuteTally
from observer.runtime.watermark import ReadProgress, TopicPartition
from observer.runtime.writes import StoreWrites

__all__ = ["Tracker"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Prepared:
    """A decoded batch of keyed records, ready to be run against the state."""

    routed: list[Routed | None]  # per keyed record (None: a mark, a hop or unreadable)
    items: list[tuple[int, str, Event | Hop]]  # record index, slot id, event or message
    slots: list[tuple[int, str]]  # (shard, slot id), unique, first-seen order
    offsets: dict[TopicPartition, int]


class Tracker:
    """Runs the deployed flows for the owned shards. The rebalance listener of the keyed
    topic's consumer. Owned by the loop's thread."""

    def __init__(
        self,
        config: ObserverConfig,
        registry: FlowRegistry,
        engine: Engine,
        ports: RuntimePorts,
        *,
        source_topics: list[str],
        metrics: Metrics,
        health: Health,
        outage: StoreOutage,
        stop: threading.Event,
        tally: MinuteTally | None = None,
        wire: Mapping[str, bytes] | None = None,
    ) -> None:
        self.config = config
        self.topics = config.topics()
        self.source = ports.source
        self.originals = ports.router_source  # source records read again for dead letters
        self.store = ports.store
        self.clock = ports.clock
        self.metrics = metrics
        self.outage = outage
        self.stop = stop
        n = config.shards
        # aliases: hops between slots, and hop marks in every shard's watermark (`hops.py`)
        self.hop_sink = ports.router_sink
        self.hop_marks = hop_marks(config, registry, self.hop_sink, self.clock)
        self.shards = ShardWatermarks(n if self.hop_marks else 0)  # the owned shards
        self.cache = SlotCache(config.slot_cache_size, config.slot_cache_bytes)
        self.planning = Planning(
            engine,
            lambda sid: shard_of(sid, n),
            self.cache,
            history_cap=config.history_cap,
            ttl_slack_ms=config.ttl_slack_ms,
            wire=wire,
            hop_topic=config.keyed_topic_name(),
        )
        self.progress = ReadProgress()  # of the keyed partitions: the lag
        self.unavailable = UnavailableVersions(metrics, ports.clock.monotonic)
        mono = self.clock.monotonic
        self.commits = OffsetCommits(
            "tracker", self.source, self.progress, metrics, mono, timed=True
        )
        self.bounds = DueBounds(mono)  # what the due indexes can hold (issue 18)
        self.publisher, self.writes = self._pipeline(config, ports, metrics, tally)
        self.ticker = DeadlineTicker(
            config,
            registry,
            shards=self.shards,
            sources=ports.router_source,
            source_topics=source_topics,
            store=self.store,
            writes=self.writes,
            planning=self.planning,
            health=health,
            metrics=metrics,
            clock=self.clock,
            unavailable=self.unavailable,
            bounds=self.bounds,
        )
        self.decider = GuardDecider(
            registry, self.store, self.publisher, metrics, self.clock, config, self.topics.alerts
        )
        self._tick_every = Every(config.tick_interval_ms / 1000.0, mono)
        self._commit_every = Every(config.commit_interval_ms / 1000.0, mono)
        self._marks_moved = False  # since the last tick

    def _pipeline(
        self,
        config: ObserverConfig,
        ports: RuntimePorts,
        metrics: Metrics,
        tally: MinuteTally | None,
    ) -> tuple[Publisher, StoreWrites]:
        """The write pipeline: a plan is written to the store, then its records published."""
        publisher = Publisher(
            ports.sink,
            ports.webhooks,
            metrics,
            self.clock,
            retry_backoff_ms=config.retry_backoff_ms,
            topics=self.topics,
            hops=ports.router_sink,
            shards=config.shards,
        )
        writes = StoreWrites(
            self.store,
            publisher,
            metrics,
            commit_delay_ms=config.commit_delay_ms,
            clock=self.clock,
            on_durable=self.commits.written,
            tally=tally,
            on_published=None if self.hop_marks is None else self.hop_marks.handed_over,
            due_bounds=self.bounds,
        )
        return publisher, writes

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.publisher.start()
        self.source.subscribe([self.config.keyed_topic_name()], self)
        self.ticker.refresh_sources()

    def deploy(self, registry: FlowRegistry, source_topics: list[str]) -> None:
        """Run a new deployment from the next batch on (issue 15)."""
        self.planning.engine.registry = registry
        self.decider.registry = registry
        self.ticker.deploy(registry, source_topics)
        self.deployed(registry)

    def finish(self) -> None:
        """Before stopping: settle the write in flight, wait for deliveries, clear the
        acknowledged outbox entries, and commit what is durable."""
        if self.outage.waiting:
            log.error("stopping while the state store is down: nothing more is committed")
        try:
            self.writes.settle()
        except StoreError as exc:
            log.error("the last batch was not stored (%s): its offsets are not committed", exc)
            self.writes.drop()
        if remaining := self.publisher.flush(self.config.shutdown_timeout_ms / 1000.0):
            log.warning(
                "%d records not acknowledged at shutdown; they stay in the outbox", remaining
            )
        if self.hop_marks is not None:
            self.hop_marks.flush(self.config.shutdown_timeout_ms / 1000.0)
        try:
            self.writes.write_acks()
        except StoreError as exc:
            log.warning(
                "could not clear delivered records from the outbox (%s); they will be "
                "published again",
                exc,
            )
        self.commit(wait=True)

    def close(self) -> None:
        self.source.close()
        self.publisher.close()

    def deployed(self, registry: FlowRegistry) -> None:
        """Flows were deployed (a reload): the first flow with aliases turns hop marks on, and
        from then on every shard's watermark waits for every shard's hop mark."""
        if self.hop_marks is None:
            self.hop_marks = hop_marks(self.config, registry, self.hop_sink, self.clock)
            if self.hop_marks is not None:
                self.shards.hops = self.config.shards
                self.writes.on_published = self.hop_marks.handed_over

    def lag(self) -> int:
        """Keyed records not read yet on the owned partitions (as last fetched)."""
        return self.progress.lag()

    # -- rebalance listener (called inside source.poll) ---------------------------------------------

    def assigned(self, tps: list[TopicPartition]) -> None:
        """Keyed partitions assigned: their shards are ours. Publish what their outboxes hold
        (a previous owner may have died before publishing); their watermarks come back with
        the marks read from the committed offset on."""
        self.cache.clear()
        self.commits.assigned(tps)
        shards = [p for _t, p in tps]
        for s in shards:
            self.shards.reset(s)
        self.bounds.forget(shards)  # another process may have written their due indexes
        self.metrics.owned_shards.set(len(self.shards))
        log.info("tracker: assigned shards %s", fmt_shards(shards))
        try:
            self.publisher.republish(self.store.outbox(shards))
        except StoreError as exc:
            self.recover(exc)

    def revoked(self, tps: list[TopicPartition]) -> None:
        """Keyed partitions taken away: finish and store the batch in hand, publish and clear
        the outbox as far as the broker acknowledges within the shutdown timeout, commit."""
        self.cache.clear()
        try:
            self.writes.settle()
        except StoreError as exc:
            # What was in flight is read again from the committed offsets (partitions we keep
            # included), so nothing of it is committed by mistake below.
            self.recover(exc)
        self.publisher.flush(self.config.shutdown_timeout_ms / 1000.0)
        if self.hop_marks is not None:
            self.hop_marks.flush(self.config.shutdown_timeout_ms / 1000.0)
        try:
            self.writes.write_acks()
        except StoreError as exc:
            log.warning("could not clear delivered records from the outbox (%s)", exc)
        self.writes.release(all_=True, stopping=self.stop.is_set())
        self.commits.revoked(tps)
        self._disown(tps)
        log.info("tracker: revoked shards %s", fmt_shards([p for _t, p in tps]))

    def lost(self, tps: list[TopicPartition]) -> None:
        self.cache.clear()
        self.commits.lost(tps)
        self._disown(tps)
        log.warning("tracker: lost shards %s (not committing)", fmt_shards([p for _t, p in tps]))

    def commit_done(self, error: str | None, offsets: dict[TopicPartition, int]) -> None:
        self.commits.commit_done(error, offsets)

    def _disown(self, tps: list[TopicPartition]) -> None:
        for _t, p in tps:
            self.shards.drop(p)
        self.bounds.forget(p for _t, p in tps)
        if self.hop_marks is not None:
            self.hop_marks.drop(p for _t, p in tps)
        self.metrics.owned_shards.set(len(self.shards))

    # -- one turn -----------------------------------------------------------------------------------

    def poll(self, timeout_s: float) -> None:
        """Read and handle one batch, tick when due, serve deliveries, commit when due."""
        if self.outage.waiting:  # the store is down (`recover`)
            self._retry_store(timeout_s)
            return
        records = self.source.poll(self.config.batch_size, timeout_s)
        try:
            if records:
                self._handle(records)
            else:  # nothing to plan while the store applies the write in flight: settle it
                self.writes.settle()
            # deadlines: as soon as a mark moved a watermark, and every TICK_INTERVAL_MS
            if self._marks_moved or self._tick_every.due():
                self._tick()
            self.decider.turn(self.shards.owned())  # guardrails, every guard interval
        except StoreError as exc:
            self.recover(exc)
        self.publisher.serve()
        if self.publisher.hop_failed is not None:
            raise ObserverError(f"cannot write to the keyed topic: {self.publisher.hop_failed}")
        if self.hop_marks is not None:
            self.hop_marks.send()
        if self._commit_every.due():
            self.commit(wait=False)
        self.publisher.count()

    def _tick(self) -> None:
        self._tick_every.restart()
        self._marks_moved = False
        for tp, (low, high, pos) in self.source.offsets(list(self.progress.partitions)).items():
            self.progress.offsets(tp, low, high, pos)
        if self.ticker.tick():
            self._tick_every.hurry()  # more are due: tick again right after the next poll

    def commit(self, wait: bool) -> None:
        """Commit the offsets whose write is durable (`wait`: wait for the newest to be)."""
        self.writes.release(all_=wait, stopping=self.stop.is_set())
        self.commits.commit(wait)

    # -- a batch ------------------------------------------------------------------------------------

    def _handle(self, records: list[SourceRecord]) -> None:
        t0 = self.clock.monotonic()
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
        # batch's write and this batch is planned while the store applies that one. A slot that
        # write touched is normally cached (its state, or absent); if one is not (evicted, or
        # the cache was cleared since), the write is waited for before it is loaded.
        if misses and self.writes.touches(s for _, s in misses):
            self.writes.settle()
        raw = self.store.load(misses).result() if misses else []
        if absent:
            misses += absent
            raw = [*raw, *([None] * len(absent))]
        plan = self._plan(prepared, cached, misses, raw)
        if self.hop_marks is not None:  # what the hop marks say once its hops are handed over
            plan.hop_watermarks = self.shards.values(self.ticker.partitions, sources_only=True)
        self.writes.settle()  # then, with no write in flight, what must not wait for one:
        self.ticker.between_writes(lambda: self.decider.turn(self.shards.owned()))
        self.writes.send(plan, prepared.offsets)
        self.metrics.batch_seconds.observe(self.clock.monotonic() - t0)

    def _prepare(self, records: list[SourceRecord]) -> _Prepared:
        """Decode keyed records: events become items of their shard's slots, marks advance
        the shard's watermark (they were read after every event they cover)."""
        items: list[tuple[int, str, Event | Hop]] = []
        routed: list[Routed | None] = []
        slots: dict[str, int] = {}  # slot id -> shard, in first-seen order
        owned = set(self.shards.owned())  # (a set: one membership test per record)
        for i, rec in enumerate(records):
            shard = rec.partition
            if shard not in owned:  # a record fetched just before a revocation
                routed.append(None)
                continue
            value = rec.value
            if type(value) is not Routed:  # read from the broker
                decoded = self._decode(rec, shard)
                if decoded is None:  # a mark, or a record skipped
                    routed.append(None)
                    continue
                sid, item, r = decoded
                routed.append(r)
            else:  # direct routing: our router's own event, on its shard
                item = value.event
                sid = f"{value.flow}:{item.key}"  # = slot_id(flow, key), once per event
                routed.append(value)
            slots.setdefault(sid, shard)
            items.append((i, sid, item))
        offsets = next_offsets((r.topic, r.partition, r.offset) for r in records)
        return _Prepared(routed, items, [(sh, sid) for sid, sh in slots.items()], offsets)

    def _decode(
        self, rec: SourceRecord, shard: int
    ) -> tuple[str, Event | Hop, Routed | None] | None:
        """(slot id, event or message, routed event), or None: a mark (taken in) or skipped."""
        try:
            r = decode_keyed(rec.value)
        except (ValueError, TypeError) as exc:
            self._skip(rec, f"is not one the router writes ({exc})")
            return None
        if isinstance(r, Hop):  # a message between slots (aliases): not dead-lettered
            keyed: tuple[str, Event | Hop, Routed | None] = (slot_id(*r.target()), r, None)
        elif isinstance(r, Routed):
            keyed = (slot_id(r.flow, r.event.key), r.event, r)
        else:  # a mark, or a hop mark
            self._marks_moved |= self.shards.observe(shard, r)
            return None
        if shard_of(keyed[0], self.config.shards) != shard:
            self._skip(rec, f"belongs to shard {shard_of(keyed[0], self.config.shards)}")
            return None
        return keyed

    def _skip(self, rec: SourceRecord, why: str) -> None:
        log.error("keyed record %s[%d]@%d %s; skipped", rec.topic, rec.partition, rec.offset, why)
        self.metrics.processing_errors.labels("keyed").inc()

    def _plan(
        self,
        prepared: _Prepared,
        cached: Mapping[str, tuple[KeySlot, bytes]],
        loaded: Sequence[tuple[int, str]],
        raw: Sequence[bytes | None],
    ) -> BatchPlan:
        planner = self.planning.start(self.clock.now_ms())
        for shard, sid in prepared.slots:
            hit = cached.get(sid)
            if hit is not None:
                planner.adopt(sid, shard, hit[0], hit[1])
        for (shard, sid), data in zip(loaded, raw, strict=True):
            flow, key = split_slot_id(sid)
            if not planner.load(sid, flow, key, shard, data):
                log.error(
                    "stored state of %s cannot be decoded; its events go to the dead-letter topic",
                    sid,
                    extra={"flow": flow, "key": key},
                )
        failed: dict[int, str] = {}
        planner.watermarks = self.shards.values(self.ticker.partitions)
        for i, sid, ev in prepared.items:
            try:
                if isinstance(ev, Hop):
                    planner.deliver(sid, ev)
                else:
                    planner.apply(sid, ev)
            except VersionUnavailable as unavailable:
                self.unavailable.report(unavailable, f"events of {sid} go to the dead-letter topic")
                failed.setdefault(i, str(unavailable))
            except Exception as exc:
                flow, key = split_slot_id(sid)
                log.exception(
                    "processing %s %s failed; the record goes to the dead-letter topic",
                    *((f"message {ev.kind}", ev.id()) if isinstance(ev, Hop) else (ev.type, ev.id)),
                    extra={"flow": flow, "key": key},
                )
                self.metrics.processing_errors.labels("apply").inc()
                failed.setdefault(i, f"processing failed: {type(exc).__name__}: {exc}")
        if failed:
            dead = [(r, reason) for i, reason in failed.items() if (r := prepared.routed[i])]
            originals = self.originals.fetch([(r.topic, r.partition, r.offset) for r, _ in dead])
            n = self.config.shards
            for r, reason in dead:
                shard = shard_of(slot_id(r.flow, r.event.key), n)
                planner.publish(routed_dead_letter(r, reason, originals, self.topics), shard=shard)
                planner.count(("topic", r.topic, "dead_letter", "processing"))
        return self.planning.finish(planner)

    # -- store failures -----------------------------------------------------------------------------

    def recover(self, exc: StoreError) -> None:
        """The store failed: forget what was written since the last commit; polls then serve
        the consumer (a rebalance never waits for the store) and try the store with backoff,
        and once it answers read the owned partitions again from their committed offsets
        (`_retry_store`). That covers every lost write, confirmed ones lost in a crash too:
        offsets are committed only `commit_delay_ms` after their write. Events read again
        are recognised by the engine and change nothing twice."""
        self.cache.clear()  # the store may not hold what the cache does
        self.bounds.forget()  # nor the due bounds
        self.writes.drop()
        self.commits.forget()
        if not self.outage.waiting:
            self.outage.begin(exc, "writing a batch")

    def _retry_store(self, timeout_s: float) -> None:
        self.source.serve(self.outage.wait_s(timeout_s))
        self.outage.retry(self._read_again, failed=self.cache.clear)

    def _read_again(self) -> None:
        self.store.reconnect()
        for _t, shard in self.commits.rewind():
            self.shards.reset(shard)  # its watermark comes back with the marks
        self.publisher.republish(self.store.outbox(self.shards.owned()))
