"""A batch of work on key slots: apply events or fire timers, then plan the store write.

Pure: given loaded slot bytes, events, a watermark and `now`, a `BatchPlanner` returns the
`BatchPlan`: the `WriteBatch`, the records to publish and the signals for metrics. A failure while applying one event restores
the slot to what it was before that event (rebuilt from the loaded bytes and the events applied
before it) and is raised to the caller, who dead-letters the record and goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, cast

from observer.correlation import BUFFERED, MATCHED, STARTED, Count, count_signal
from observer.engine.codec import decode_slot, encode_slot
from observer.engine.core import Engine, VersionUnavailable
from observer.engine.effects import Effect, Hop, Publish, Signal
from observer.engine.state import Event, InstanceState, KeySlot
from observer.engine.timers import anchor_of
from observer.flows.compiled import CompiledFlow
from observer.ingest import dead_letter  # re-exported: the runtime's callers use it here
from observer.runtime.cache import SlotCache
from observer.runtime.guard_intake import GuardIntake
from observer.runtime.hops import hop_record
from observer.runtime.outbox import OutboxRecord, to_record
from observer.runtime.ports import SlotPut, WriteBatch
from observer.runtime.slot_history import DAY_MS, history_entry, safety_ttl_ms  # re-exported

__all__ = [
    "BatchPlan",
    "BatchPlanner",
    "Planning",
    "SlotUnreadable",
    "dead_letter",
    "history_entry",
    "safety_ttl_ms",
]


class SlotUnreadable(Exception):
    """The stored state of a slot cannot be decoded; its events are dead-lettered, the state
    is left as it is."""


@dataclass(slots=True)
class BatchPlan:
    """What a batch produced: the write, the records to publish once it returned (in order),
    the signals (metrics), step latencies (flow, step, ms) and slots touched."""

    write: WriteBatch
    records: list[tuple[int, OutboxRecord]]
    signals: list[Signal]
    latencies: list[tuple[str, str, int]]
    slots: int
    next_seq: int
    states: list[tuple[str, KeySlot | None, bytes | None]]  # slot id, final state and its bytes
    # correlation health (issue 16): what became of the events, per source and step
    tally: dict[Count, int] = field(default_factory=dict)
    # aliases: the owned shards' source watermarks as this batch was read (None: not a batch
    # of records): what hop marks say once its hops are handed over (`hops.py`)
    hop_watermarks: dict[int, int] | None = None
    # hostile input (issue 12): signals worth a log line (actions not carried out, drops)
    notes: list[Signal] = field(default_factory=list)


_OBSERVED_COUNTS: dict[int, tuple[CompiledFlow, tuple[Count, ...]]] = {}


def _observed_counts(flow: CompiledFlow) -> tuple[Count, ...]:
    """The correlation-health count of each step of `flow` observed (by step index), built
    once per compiled flow rather than once per event."""
    hit = _OBSERVED_COUNTS.get(id(flow))
    if hit is None or hit[0] is not flow:
        keys = tuple(("step", flow.name, step.name, "observed") for step in flow.steps)
        if len(_OBSERVED_COUNTS) > 1000:  # flows redeployed many times: start again
            _OBSERVED_COUNTS.clear()
        hit = _OBSERVED_COUNTS[id(flow)] = (flow, keys)
    return hit[1]


class _Work:
    """One slot in a batch: its stored bytes (to rebuild from), the live state, what was done."""

    __slots__ = ("dirty", "due_override", "effects", "ops", "original", "shard", "sid", "slot")

    def __init__(self, sid: str, shard: int, original: bytes | None, slot: KeySlot | None) -> None:
        self.sid = sid
        self.shard = shard
        self.original = original
        self.slot = slot  # None: unreadable
        # ("apply", Event, watermark) | ("deliver", Hop, watermark) | ("fire", None, watermark)
        self.ops: list[tuple[str, Any, int | None]] = []
        self.effects: list[Publish | Signal] = []  # rendered into history entries by `finish`
        self.dirty = False
        self.due_override: int | None = None


class BatchPlanner:
    """Work on slots for one batch of events or one tick, planned into one write. Not
    thread-safe; one per batch."""

    def __init__(
        self,
        engine: Engine,
        shard_of: Callable[[str], int],
        now: int,
        *,
        seq: int = 0,
        history_cap: int = 100,
        ttl_slack_ms: int = DAY_MS,
        wire: Mapping[str, bytes] | None = None,
        hop_topic: str = "",
    ) -> None:
        """`history_cap`: history entries written per slot and batch at most (the newest);
        0 writes no history (and renders none). `wire`: registry subject -> the wire
        format's header of actions that name one. `hop_topic`: where messages between slots
        go (aliases: the keyed topic)."""
        self.engine = engine
        self.hop_topic = hop_topic
        self.shard_of = shard_of
        self.now = now
        self.history_cap = history_cap
        self.ttl_slack_ms = ttl_slack_ms
        self._seq = seq
        self._works: dict[str, _Work] = {}
        self._records: list[tuple[int, OutboxRecord]] = []
        self._signals: list[Signal] = []
        self._notes: list[Signal] = []
        self._latencies: list[tuple[str, str, int]] = []
        self._stats: dict[tuple[int, str], int] = {}  # (shard, field) -> increment
        self._stale: list[tuple[int, str]] = []
        self._flows: dict[tuple[str, int], CompiledFlow] = {}
        self._tally: dict[Count, int] = {}  # correlation health (`observer/correlation.py`)
        self._wire = wire
        # each shard's watermark as the batch is applied (a shard not in it: `now` stands in)
        self.watermarks: Mapping[int, int] = {}
        self.guards = GuardIntake.of(engine, now)  # guardrails: deviations' records apart

    # -- slots ------------------------------------------------------------------------------------

    def load(self, sid: str, flow: str, key: str, shard: int, raw: bytes | None) -> bool:
        """Register a slot with its stored bytes (None: nothing stored). False if unreadable."""
        if sid in self._works:
            return self._works[sid].slot is not None
        slot: KeySlot | None
        try:
            slot = KeySlot(flow, key) if raw is None else decode_slot(flow, key, raw)
        except Exception:
            slot = None
        self._works[sid] = _Work(sid, shard, raw, slot)
        return slot is not None

    def adopt(self, sid: str, shard: int, slot: KeySlot, stored: bytes | None) -> None:
        """Register a slot already decoded (from a cache); `stored` is what it decodes from."""
        if sid not in self._works:
            self._works[sid] = _Work(sid, shard, stored, slot)

    def _rebuild(self, w: _Work) -> None:
        assert w.slot is not None
        slot = (
            KeySlot(w.slot.flow, w.slot.key)
            if w.original is None
            else decode_slot(w.slot.flow, w.slot.key, w.original)
        )
        for op, arg, watermark in w.ops:
            if op == "apply":
                self.engine.apply(slot, arg, self.now, watermark)
            elif op == "deliver":
                self.engine.deliver(slot, arg, self.now, watermark)
            else:
                assert watermark is not None
                self.engine.fire(slot, watermark, self.now)
        w.slot = slot

    def apply(self, sid: str, event: Event) -> None:
        """Apply an event to a loaded slot at its shard's watermark (`watermarks`). Raises
        SlotUnreadable, or the engine's error after restoring the slot."""
        self._run(sid, "apply", event, event.source, self.engine.apply)

    def deliver(self, sid: str, hop: Hop) -> None:
        """Deliver a message of another slot (aliases), like `apply`; the event it brings is
        counted for its own source when it is delivered."""
        source = hop.events[0].source if hop.events else None
        self._run(sid, "deliver", hop, source, self.engine.deliver)

    def _run(
        self, sid: str, op: str, arg: Any, source: str | None, run: Callable[..., list[Effect]]
    ) -> None:
        w = self._works[sid]
        slot = w.slot
        if slot is None:
            raise SlotUnreadable(f"stored state of {sid!r} cannot be decoded")
        watermark = self.watermarks.get(w.shard)
        had = inst = slot.instance
        before = len(inst.observed) if inst is not None else 0
        buffered = len(slot.buffer)
        try:
            effects = run(slot, arg, self.now, watermark)
        except Exception:
            self._rebuild(w)
            raise
        w.ops.append((op, arg, watermark))
        inst = slot.instance
        if inst is not None and len(inst.observed) > before:
            self._step_latencies(slot, inst, before)
        # what became of the event (a drop for a full buffer is counted from its signal)
        if source is not None:
            kind = (
                MATCHED
                if had is not None
                else STARTED
                if inst is not None
                else BUFFERED
                if len(slot.buffer) > buffered
                else None
            )
            if kind is not None:
                count = ("src", slot.flow, source, kind)
                tally = self._tally
                tally[count] = tally.get(count, 0) + 1
        self._take(w, effects, source)

    def fire(self, sid: str, watermark: int) -> None:
        """Fire the slot's timers due at or before `watermark`."""
        w = self._works[sid]
        slot = w.slot
        if slot is None:
            raise SlotUnreadable(f"stored state of {sid!r} cannot be decoded")
        early = [(b.seq, b.event.source) for b in slot.buffer] if slot.instance is None else []
        try:
            effects = self.engine.fire(slot, watermark, self.now)
        except Exception:
            self._rebuild(w)
            raise
        w.ops.append(("fire", None, watermark))
        if early:  # the early events the timers dropped (orphaned), in buffer order
            kept = {b.seq for b in slot.buffer}
            self._take(w, effects, None, [src for seq, src in early if seq not in kept])
        else:
            self._take(w, effects, None)
        w.dirty = True  # rewrite the due time even if nothing fired

    def defer(self, sid: str, until: int) -> None:
        """Keep the slot as it is but make it due again only at `until` (a timer that failed)."""
        w = self._works[sid]
        w.due_override = until
        w.dirty = True

    def forget_due(self, shard: int, sid: str) -> None:
        """A due member whose state is gone (expired by TTL): drop it."""
        self._stale.append((shard, sid))

    def publish(self, p: Publish, shard: int | None = None) -> None:
        """A record not tied to a slot (a dead letter), kept in `shard`'s outbox (default: the
        shard of its observer-id)."""
        self._add_record(self.shard_of(p.observer_id) if shard is None else shard, p)

    def count(self, count: Count, n: int = 1) -> None:
        """Add to a correlation-health count of this batch (e.g. a dead letter's reason)."""
        self._tally[count] = self._tally.get(count, 0) + n

    # -- internals --------------------------------------------------------------------------------

    def _flow(self, slot: KeySlot) -> CompiledFlow:
        """The flow governing the slot (cached per flow and version for this batch)."""
        version = slot.instance.version if slot.instance is not None else -1
        flow = self._flows.get((slot.flow, version))
        if flow is None:
            flow = self._flows[(slot.flow, version)] = self.engine.flow_of(slot)
        return flow

    def _step_latencies(self, slot: KeySlot, inst: InstanceState, before: int) -> None:
        """Event time from anchor to step, for every step the last event observed (steps are
        only ever added to `observed`, so the new ones are its last entries)."""
        flow = self._flow(slot)
        observed = inst.observed
        if len(observed) == before + 1:
            new: Any = (next(reversed(observed)),)
        else:
            new = islice(observed, before, None)
        steps = flow.steps
        tally = self._tally
        keys = _observed_counts(flow)
        for idx in new:
            count = keys[idx]
            tally[count] = tally.get(count, 0) + 1
            step = steps[idx]
            if step.is_start:
                continue
            t = observed[idx]
            anchors = step.anchors
            anchor = (
                observed.get(anchors[0])  # = anchor_of's usual case, inlined
                if len(anchors) == 1
                else anchor_of(anchors, observed, inst.entries, step.path)
            )
            if anchor is not None and t >= anchor:
                self._latencies.append((flow.name, step.name, t - anchor))

    def _add_record(self, shard: int, p: Publish) -> None:
        rec = to_record(p, self.now, self._seq, self._wire)
        self._seq += 1
        self._records.append((shard, rec))

    def _guard(self, w: _Work, p: Publish) -> bool:
        """Give a deviation's record to the guardrails (False: an alert none waits for)."""
        slot = cast("KeySlot", w.slot)
        if p.action is None and not self.guards.waits(slot.flow, p):
            return False
        rec = to_record(p, self.now, self._seq, self._wire)
        self._seq += 1
        hist = history_entry(p, self.now)
        if self.guards.take(slot.flow, slot.key, w.shard, w.sid, p, rec, hist):
            self._records.append((w.shard, rec))  # gated: published after the write unless held
        return True

    def _take(
        self,
        w: _Work,
        effects: list[Effect],
        source: str | None,
        orphans: list[str] | None = None,
    ) -> None:
        """Take an engine call's effects in. `source`: the source of the event applied (None
        for timers); `orphans`: the sources of the early events the timers dropped, in order."""
        w.dirty = True
        if not effects:
            return
        keep = self.history_cap > 0
        started = False
        hops = guarded = False
        for eff in effects:
            if type(eff) is Publish:
                if eff.deviation is not None and self._guard(w, eff):
                    guarded = True
                    continue
                self._add_record(w.shard, eff)
            elif type(eff) is Hop:  # kept in the sender's outbox until the keyed topic has it
                self._records.append(
                    (w.shard, hop_record(eff, self.hop_topic, self.now, self._seq))
                )
                self._seq += 1
                hops = True
            else:
                assert isinstance(eff, Signal)
                self._signals.append(eff)
                what = eff.what
                if what == "started":
                    started = True
                    stat = (w.shard, "open:" + eff.flow)
                    self._stats[stat] = self._stats.get(stat, 0) + 1
                elif what == "ended":
                    stat = (w.shard, "open:" + eff.flow)
                    self._stats[stat] = self._stats.get(stat, 0) - 1
                elif what == "action_error" or what == "dropped":
                    self._notes.append(eff)
                count_signal(self._tally, eff.what, eff.flow, eff.step, eff.detail, source, orphans)
        if keep:
            kept = (
                [e for e in effects if not isinstance(e, Hop)]
                if hops
                else cast("list[Publish | Signal]", effects)
            )
            kept = self.guards.not_taken(kept) if guarded else kept  # their history: their fate
            if started:
                # The state says when and in which version an instance started: leaving
                # `started` out of the history spares most open instances a history key
                # (~300 B of Redis each).
                kept = [e for e in kept if not (isinstance(e, Signal) and e.what == "started")]
            w.effects += kept

    # -- the plan ---------------------------------------------------------------------------------

    def plan(self) -> BatchPlan:
        """The write and the records of everything done in this batch."""
        batch = WriteBatch()
        states: list[tuple[str, KeySlot | None, bytes | None]] = []
        puts = batch.puts
        now = self.now
        slack = self.ttl_slack_ms
        cap = self.history_cap
        next_due = self.engine.next_due
        for w in self._works.values():
            slot = w.slot
            if slot is None:
                continue
            if not w.dirty:
                states.append((w.sid, slot, w.original))
                continue
            if slot.empty:
                batch.deletes.append((w.shard, w.sid))
                states.append((w.sid, None, None))
                continue
            try:
                ttl = safety_ttl_ms(self._flow(slot), slot, now, slack)
            except VersionUnavailable:  # a slot kept as it is (timers deferred): TTLs only grow
                ttl = slack
            due = w.due_override if w.due_override is not None else next_due(slot)
            state = encode_slot(slot)
            states.append((w.sid, slot, state))
            # history entries are rendered here, and only those the capped list keeps
            history = (
                [history_entry(e, now) for e in w.effects[-cap:]] if cap > 0 and w.effects else []
            )
            puts.append(SlotPut(w.shard, w.sid, state, ttl, due, history))
        batch.stale_due.extend(self._stale)
        self.guards.plan(batch, self._records, states, self.watermarks)  # outbox, guardrails
        for (_shard, name), inc in self._stats.items():
            batch.stats[name] = batch.stats.get(name, 0) + inc
        batch.stats = {k: v for k, v in batch.stats.items() if v}
        batch.shard_stats = {k: v for k, v in self._stats.items() if v}
        return BatchPlan(
            batch,
            self._records,
            self._signals,
            self._latencies,
            len(self._works),
            self._seq,
            states,
            self._tally,
            notes=self._notes,
        )


class Planning:
    """Starts the planners of one tracker and takes their plans in: the records' sequence
    numbers run on across batches and ticks, and the slot cache learns what each plan writes."""

    def __init__(
        self,
        engine: Engine,
        shard_of: Callable[[str], int],
        cache: SlotCache,
        *,
        history_cap: int,
        ttl_slack_ms: int,
        wire: Mapping[str, bytes] | None = None,
        hop_topic: str = "",
    ) -> None:
        self.engine = engine
        self.wire = wire  # registry subject -> wire-format header (issue 16)
        self.shard_of = shard_of
        self.cache = cache
        self.history_cap = history_cap
        self.ttl_slack_ms = ttl_slack_ms
        self.hop_topic = hop_topic
        self._seq = 0

    def start(self, now: int) -> BatchPlanner:
        return BatchPlanner(
            self.engine,
            self.shard_of,
            now,
            seq=self._seq,
            history_cap=self.history_cap,
            ttl_slack_ms=self.ttl_slack_ms,
            wire=self.wire,
            hop_topic=self.hop_topic,
        )

    def finish(self, planner: BatchPlanner) -> BatchPlan:
        plan = planner.plan()
        self._seq = plan.next_seq
        put = self.cache.put
        for sid, slot, stored in plan.states:
            put(sid, slot, stored)  # None: the write leaves nothing stored for it
        return plan
