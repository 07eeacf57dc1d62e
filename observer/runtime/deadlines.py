"""`DeadlineTicker`: fires the deadlines of the owned shards as their watermarks pass them.

A shard's watermark is the minimum, over every partition of every source topic, of the marks
read in the shard's keyed partition (`keyed.ShardWatermarks`); the source partitions come from
the cluster's metadata, refreshed every 10 s. One tick reads, for every owned shard, the slots
due at or before its watermark (at most `tick_limit`, with their state, in one request), fires
their timers and writes the result like a batch.

Only the shards whose watermark reached their due bound (`due_bounds.py`) are read: a tick for
which none did neither waits for the batch write in flight nor asks the store anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from observer.config import ObserverConfig
from observer.engine.core import VersionUnavailable
from observer.flows.aliases import split_alias_flow
from observer.flows.registry import FlowRegistry
from observer.metrics import Metrics
from observer.runtime.batch import BatchPlanner, Planning
from observer.runtime.deployments import UnavailableVersions
from observer.runtime.due_bounds import DueBounds
from observer.runtime.every import Every
from observer.runtime.health import Health
from observer.runtime.keyed import ShardWatermarks
from observer.runtime.ports import Clock, EventSource, StateStore
from observer.runtime.shards import split_slot_id
from observer.runtime.watermark import TopicPartition
from observer.runtime.writes import StoreWrites

__all__ = ["DeadlineTicker"]

log = logging.getLogger(__name__)

_SOURCES_EVERY_S = 10.0
_DEFER_FAILED_TIMER_MS = 60_000


class DeadlineTicker:
    """Ticks for the shards in `shards`; `sources` answers which source partitions exist."""

    def __init__(
        self,
        config: ObserverConfig,
        registry: FlowRegistry,
        *,
        shards: ShardWatermarks,
        sources: EventSource,
        source_topics: list[str],
        store: StateStore,
        writes: StoreWrites,
        planning: Planning,
        health: Health,
        metrics: Metrics,
        clock: Clock,
        bounds: DueBounds,
        unavailable: UnavailableVersions | None = None,
    ) -> None:
        """`bounds`: the owned shards' due bounds (`writes` lowers them)."""
        self.registry = registry
        self.unavailable = unavailable or UnavailableVersions(metrics, clock.monotonic)
        self.tick_limit = config.tick_limit
        self.shards = shards
        self.sources = sources
        self.source_topics = source_topics
        self.store = store
        self.writes = writes
        self.planning = planning
        self.health = health
        self.metrics = metrics
        self.clock = clock
        self._partitions: frozenset[TopicPartition] = frozenset()
        self._refresh_every = Every(_SOURCES_EVERY_S, clock.monotonic)
        # guardrails: the watermarks stored for the flows' deciders (written at most every
        # guard interval, once every timer up to them fired)
        self._stored: dict[int, int] = {}
        self._store_every = Every(config.guard_interval_ms / 1000.0, clock.monotonic)
        self.bounds = bounds

    def refresh_sources(self) -> None:
        """Every partition of every source topic: a shard's watermark needs a mark for each."""
        self._refresh_every.restart()
        counts = self.sources.partitions(self.source_topics)
        if counts is None:
            return
        partitions = frozenset((t, p) for t, n in counts.items() for p in range(n))
        if partitions != self._partitions:
            log.info(
                "source partitions: %s", ", ".join(f"{t}[{n}]" for t, n in sorted(counts.items()))
            )
            self._partitions = partitions

    def deploy(self, registry: FlowRegistry, source_topics: list[str]) -> None:
        """A new deployment: its flows, and the topics whose partitions a watermark needs."""
        self.registry = registry
        if source_topics != self.source_topics:
            self.source_topics = source_topics
            self.refresh_sources()

    @property
    def partitions(self) -> frozenset[TopicPartition]:
        """Every partition of every source topic, as last learnt."""
        return self._partitions

    def shard_watermarks(self) -> list[tuple[int, int]]:
        """(shard, watermark) of each owned shard whose watermark is known."""
        if self._refresh_every.due():
            self.refresh_sources()
        partitions = self._partitions
        value = self.shards.value
        out = []
        for shard in self.shards.owned():
            wm = value(shard, partitions)
            if wm is not None:
                out.append((shard, wm))
        low = min((wm for _s, wm in out), default=None)
        self.health.watermark = low if len(out) == len(self.shards) else None
        if low is not None:
            self.metrics.watermark.set(low / 1000.0)
        return out

    def tick(self) -> bool:
        """Fire what is due; True if there may be more (`tick_limit` slots were due)."""
        marks = self.shard_watermarks()
        wanted = self.bounds.to_read(marks)
        if not wanted:  # nothing can be due: neither wait for the write in flight nor read
            return self._idle(marks)
        self.writes.settle()
        due = self.store.due(wanted, self.tick_limit)
        self.bounds.learn(due.later)
        self.health.overdue_ms = due.overdue_ms or 0
        self.metrics.overdue.set((due.overdue_ms or 0) / 1000.0)
        more = len(due.slots) >= self.tick_limit
        store = [] if more else self._to_store(marks)
        if not due.slots:
            self.writes.write_acks(store)
            self._stored.update(store)
            return False
        by_shard = dict(marks)
        planner = self.planning.start(self.clock.now_ms())
        planner.watermarks = by_shard  # the guardrails' floors compare due times with them
        names = set(self.registry.names())
        for shard, sid, raw in due.slots:
            self._fire(planner, shard, sid, raw, by_shard[shard], names)
        plan = self.planning.finish(planner)
        plan.write.watermarks = store
        self.writes.write(plan)
        self._stored.update(store)
        return more

    def _idle(self, marks: list[tuple[int, int]]) -> bool:
        """A tick with nothing due. With a write in flight, the outbox deletions go with the
        next write and the watermarks are stored by `between_writes` (or a later tick)."""
        self.health.overdue_ms = 0
        self.metrics.overdue.set(0.0)
        if not self.writes.in_flight:
            store = self._to_store(marks) if marks else []
            self.writes.write_acks(store)
            self._stored.update(store)
        return False

    def between_writes(self, also: Callable[[], None]) -> None:
        """Called by a batch between the previous write (settled) and its own: store the
        shards' watermarks if due and nothing is due up to them, then `also` (the guardrails'
        decider): requests that would otherwise wait for the batch's write. Raises StoreError."""
        marks = self.shard_watermarks()
        if marks and not self.bounds.to_read(marks):
            store = self._to_store(marks)
            if store:
                self.writes.write_acks(store)
                self._stored.update(store)
        also()

    def _to_store(self, marks: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The shards' watermarks to store with this tick's write (every timer up to them has
        fired by then): those that moved, at most every guard interval."""
        stored = self._stored
        moved = [(s, wm) for s, wm in marks if stored.get(s) != wm]
        if not moved or not self._store_every.due():
            return []
        return moved

    def _fire(
        self,
        planner: BatchPlanner,
        shard: int,
        sid: str,
        raw: bytes | None,
        watermark: int,
        names: set[str],
    ) -> None:
        """Fire one due slot's timers at its shard's watermark; a slot that is gone, of a flow
        not deployed or unreadable loses its due time; one whose timers fail is retried later."""
        flow, key = split_slot_id(sid)
        if raw is None:
            planner.forget_due(shard, sid)
            return
        if split_alias_flow(flow)[0] not in names:  # (an alias value's slot: `<flow>/<alias>`)
            log.warning(
                "slot %s belongs to flow %r, which is not deployed: its timers are dropped",
                sid,
                flow,
            )
            planner.forget_due(shard, sid)
            return
        if not planner.load(sid, flow, key, shard, raw):
            log.error(
                "stored state of %s cannot be decoded; its timers are dropped",
                sid,
                extra={"flow": flow, "key": key},
            )
            planner.forget_due(shard, sid)
            return
        try:
            planner.fire(sid, watermark)
        except VersionUnavailable as exc:
            why = f"timers of {sid} wait {_DEFER_FAILED_TIMER_MS // 1000}s and try again"
            self.unavailable.report(exc, why)
            planner.defer(sid, watermark + _DEFER_FAILED_TIMER_MS)
        except Exception:
            log.exception(
                "firing timers of %s failed; retrying in %ds",
                sid,
                _DEFER_FAILED_TIMER_MS // 1000,
                extra={"flow": flow, "key": key},
            )
            self.metrics.processing_errors.labels("timer").inc()
            planner.defer(sid, watermark + _DEFER_FAILED_TIMER_MS)
