"""The engine: applies events and fires timers on one (flow, key) slot, returning effects.

Everything is a function of (deployed flows, slot, input, time): the same inputs always give
the same state and the same effects, ids included. Times are epoch ms; "now" is always passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from observer.engine.effects import Effect, Publish, Signal
from observer.engine.ids import event_hash, observer_id
from observer.engine.state import (
    DEVIATION_KINDS,
    F_LATE,
    F_MISSING,
    F_OUT_OF_ORDER,
    F_WARNED,
    SLA_BREACHED,
    SLA_WARNED,
    SLO_JUDGED,
    BufferedEvent,
    Event,
    InstanceState,
    KeySlot,
)
from observer.flows.compiled import CompiledFlow, CompiledHandler, CompiledStep
from observer.flows.registry import FlowRegistry
from observer.timefmt import format_duration, format_time

__all__ = [
    "T_EXPIRE",
    "T_MISSING",
    "T_ORPHAN",
    "T_RETAIN",
    "T_SLO",
    "Engine",
    "Timer",
    "Topics",
]

# timer kinds
T_WARN, T_MISSING, T_SLA_WARN, T_SLA_BREACH, T_EXPIRE, T_RETAIN, T_ORPHAN, T_SLO = range(8)
# in replay these fire only when --until reaches them (T_SLO publishes nothing: replay's output
# never waits for it)
LIFECYCLE = (T_EXPIRE, T_RETAIN, T_SLO)
_KIND = {k: i for i, k in enumerate(DEVIATION_KINDS)}
_DEFAULT_SEVERITY = {
    "missing": "critical",
    "error": "critical",
    "sla_breach": "critical",
    "orphaned": "critical",
}


@dataclass(frozen=True, slots=True)
class Topics:
    """Where the observer's own records go (runtime config)."""

    alerts: str = "observer.alerts"
    outcomes: str = "observer.outcomes"
    dlq: str = "observer.dlq"


@dataclass(frozen=True, slots=True, order=True)
class Timer:
    """A pending timer of a slot: `due` (ms), a rank that orders ties, its kind and step."""

    due: int
    rank: int
    kind: int
    step: int = -1


@dataclass(slots=True)
class _Deviation:
    kind: str
    step: CompiledStep | None
    deadline: int | None
    observed_at: int | None
    trigger: str
    handler: CompiledHandler | None  # None: recorded only, never alerted
    detail: str = ""  # event type (error, orphaned) or anchor name (out_of_order)


class Engine:
    """Runs deployed flows over key slots. Holds no per-instance state of its own."""

    def __init__(
        self, registry: FlowRegistry, topics: Topics | None = None, buffer_limit: int = 1000
    ) -> None:
        self._registry = registry
        self._versions: dict[tuple[str, int], CompiledFlow] = {}
        self.topics = topics or Topics()
        self.buffer_limit = buffer_limit

    @property
    def registry(self) -> FlowRegistry:
        return self._registry

    @registry.setter
    def registry(self, registry: FlowRegistry) -> None:
        """Deploy a new set of flows (the version cache is rebuilt lazily)."""
        self._registry = registry
        self._versions = {}

    # -- inputs ---------------------------------------------------------------------------------

    def apply(self, slot: KeySlot, event: Event, now: int) -> list[Effect]:
        """Apply one event to its slot (mutated in place); `now` is the observer's time (ms)."""
        out: list[Effect] = []
        inst = slot.instance
        if inst is None:
            flow = self.registry.newest(slot.flow)
            if event.source in flow.sources and (event.source, event.type) in flow.start.on:
                self._start(slot, flow, event, now, out)
            elif (event.source, event.type) in flow.step_index or (
                event.source,
                event.type,
            ) in flow.error_index:
                self._buffer(slot, flow, event, now, out)
            return out
        flow = self._flow_of(slot, inst)
        if inst.outcome is None:
            self._apply_open(slot, flow, inst, event, now, out)
        else:
            self._apply_ended(slot, flow, inst, event, now, out)
        return out

    def fire(self, slot: KeySlot, watermark: int, now: int | None = None) -> list[Effect]:
        """Fire every timer of the slot due at or before `watermark`, each at its own time, in
        time order. `now` (default: the watermark) is recorded as `detected_at`."""
        out: list[Effect] = []
        while True:
            t = self._next_timer(slot, True)
            if t is None or t[0] > watermark:
                return out
            self._fire(slot, Timer(*t), watermark if now is None else now, out)

    def timers(self, slot: KeySlot) -> list[Timer]:
        """Pending timers of the slot, soonest first (ties in declaration order)."""
        inst = slot.instance
        if inst is None:
            if not slot.buffer:
                return []
            flow = self.registry.newest(slot.flow)
            return sorted(Timer(b.read_at + flow.buffer_ms, b.seq, T_ORPHAN) for b in slot.buffer)
        flow = self._flow_of(slot, inst)
        if not inst.open:
            assert inst.ended_at is not None
            return [Timer(inst.ended_at + flow.retain_ms, 0, T_RETAIN)]
        out: list[Timer] = []
        observed = inst.observed
        flags = inst.flags
        for idx in flow.paths[inst.path].steps:
            step = flow.steps[idx]
            if idx in observed or step.optional or step.within_ms is None:
                continue
            anchor = self.anchor_time(flow, inst, step)
            if anchor is None:
                continue
            f = flags.get(idx, 0)
            if step.warn_ms is not None and not f & F_WARNED:
                out.append(Timer(anchor + step.warn_ms, idx * 2, T_WARN, idx))
            if not f & F_MISSING:
                out.append(Timer(anchor + step.within_ms, idx * 2 + 1, T_MISSING, idx))
        n = len(flow.steps) * 2
        if flow.sla is not None:
            if flow.sla.warn_ms is not None and not inst.sla & (SLA_WARNED | SLA_BREACHED):
                out.append(Timer(inst.started_at + flow.sla.warn_ms, n, T_SLA_WARN))
            if not inst.sla & SLA_BREACHED:
                out.append(Timer(inst.started_at + flow.sla.within_ms, n + 1, T_SLA_BREACH))
        if flow.slo is not None and not inst.sla & SLO_JUDGED:
            out.append(Timer(inst.started_at + flow.slo.within_ms, n + 3, T_SLO))
        out.append(Timer(inst.started_at + flow.expire_ms, n + 2, T_EXPIRE))
        out.sort()
        return out

    def next_due(self, slot: KeySlot, lifecycle: bool = True) -> int | None:
        """When the slot next needs `fire` (None: never); without `lifecycle`, ignoring
        expire, retain and the SLO's point."""
        t = self._next_timer(slot, lifecycle)
        return None if t is None else t[0]

    def _next_timer(self, slot: KeySlot, lifecycle: bool) -> tuple[int, int, int, int] | None:
        """The first of `timers(slot)` (as a tuple: due, rank, kind, step), without building
        and sorting the list: this runs for every slot written."""
        inst = slot.instance
        if inst is None:
            if not slot.buffer:
                return None
            first = min(slot.buffer, key=_read_order)
            flow = self.registry.newest(slot.flow)
            return (first.read_at + flow.buffer_ms, first.seq, T_ORPHAN, -1)
        flow = self._flow_of(slot, inst)
        if inst.outcome is not None:
            if not lifecycle:
                return None
            assert inst.ended_at is not None
            return (inst.ended_at + flow.retain_ms, 0, T_RETAIN, -1)
        # ranks are unique per timer, so (due, rank) orders timers exactly like Timer does
        best_due = best_rank = best_kind = best_step = -1
        found = False
        observed = inst.observed
        flags = inst.flags
        entry = inst.entries.get(inst.path)
        for idx, anchors, within, warn in flow.timed[inst.path]:
            if idx in observed:
                continue
            if anchors:
                latest: int | None = None
                for a in anchors:
                    ta = observed.get(a)
                    if ta is None:
                        latest = None
                        break
                    if latest is None or ta > latest:
                        latest = ta
                if latest is None:
                    continue
                anchor = latest
            elif entry is None:
                continue
            else:
                anchor = entry
            f = flags.get(idx, 0)
            if warn is not None and not f & F_WARNED:
                due = anchor + warn
                if not found or due < best_due or (due == best_due and idx * 2 < best_rank):
                    best_due, best_rank, best_kind, best_step = due, idx * 2, T_WARN, idx
                    found = True
            if not f & F_MISSING:
                due = anchor + within
                rank = idx * 2 + 1
                if not found or due < best_due or (due == best_due and rank < best_rank):
                    best_due, best_rank, best_kind, best_step = due, rank, T_MISSING, idx
                    found = True
        n = len(flow.steps) * 2
        sla = flow.sla
        if sla is not None:
            if sla.warn_ms is not None and not inst.sla & (SLA_WARNED | SLA_BREACHED):
                due = inst.started_at + sla.warn_ms
                if not found or due < best_due or (due == best_due and n < best_rank):
                    best_due, best_rank, best_kind, best_step = due, n, T_SLA_WARN, -1
                    found = True
            if not inst.sla & SLA_BREACHED:
                due = inst.started_at + sla.within_ms
                if not found or due < best_due or (due == best_due and n + 1 < best_rank):
                    best_due, best_rank, best_kind, best_step = due, n + 1, T_SLA_BREACH, -1
                    found = True
        if lifecycle and flow.slo is not None and not inst.sla & SLO_JUDGED:
            due = inst.started_at + flow.slo.within_ms
            if not found or due < best_due or (due == best_due and n + 3 < best_rank):
                best_due, best_rank, best_kind, best_step = due, n + 3, T_SLO, -1
                found = True
        if lifecycle:
            due = inst.started_at + flow.expire_ms
            if not found or due < best_due or (due == best_due and n + 2 < best_rank):
                best_due, best_rank, best_kind, best_step = due, n + 2, T_EXPIRE, -1
                found = True
        return (best_due, best_rank, best_kind, best_step) if found else None

    # -- state queries ----------------------------------------------------------------------------

    def flow_of(self, slot: KeySlot) -> CompiledFlow:
        """The compiled flow version that governs the slot (its instance's, or the newest)."""
        if slot.instance is None:
            return self.registry.newest(slot.flow)
        return self._flow_of(slot, slot.instance)

    def _flow_of(self, slot: KeySlot, inst: InstanceState) -> CompiledFlow:
        flow = self._versions.get((slot.flow, inst.version))
        if flow is None:
            flow = self.registry.get(slot.flow, inst.version) or self.registry.newest(slot.flow)
            self._versions[(slot.flow, inst.version)] = flow
        return flow

    @staticmethod
    def anchor_time(flow: CompiledFlow, inst: InstanceState, step: CompiledStep) -> int | None:
        """When the step's window starts: the latest of its anchors' times (None while one is
        not observed), or its path's entry time when it has no anchors."""
        if not step.anchors:
            return inst.entries.get(step.path)
        observed = inst.observed
        latest = None
        for a in step.anchors:
            t = observed.get(a)
            if t is None:
                return None
            if latest is None or t > latest:
                latest = t
        return latest

    def deadline(self, flow: CompiledFlow, inst: InstanceState, step: CompiledStep) -> int | None:
        """The step's deadline (ms), if it has a window and its anchors are observed."""
        if step.within_ms is None:
            return None
        anchor = self.anchor_time(flow, inst, step)
        return None if anchor is None else anchor + step.within_ms

    # -- events -----------------------------------------------------------------------------------

    def _start(
        self, slot: KeySlot, flow: CompiledFlow, event: Event, now: int, out: list[Effect]
    ) -> None:
        inst = InstanceState(flow.version, event.time, 0, {0: event.time})
        slot.instance = inst
        self._observe(flow, inst, flow.start, event)
        out.append(Signal("started", flow.name, flow.version, slot.key, "", flow.start.name, now))
        buffered = sorted(slot.buffer, key=lambda b: (b.event.time, b.seq)) if slot.buffer else ()
        slot.buffer = []
        for b in buffered:
            if inst.open:
                self._apply_open(slot, flow, inst, b.event, now, out)
            else:
                self._apply_ended(slot, flow, inst, b.event, now, out)
        self._check_complete(slot, flow, inst, event.time, event.id, now, out)

    def _buffer(
        self, slot: KeySlot, flow: CompiledFlow, event: Event, now: int, out: list[Effect]
    ) -> None:
        if any(b.event.id == event.id for b in slot.buffer):
            return
        if len(slot.buffer) >= self.buffer_limit:
            out.append(
                Signal(
                    "recorded",
                    flow.name,
                    flow.version,
                    slot.key,
                    f"buffer full: dropped {event.type} {event.id}",
                    None,
                    now,
                )
            )
            return
        seq = slot.buffer[-1].seq + 1 if slot.buffer else 0
        slot.buffer.append(BufferedEvent(event, now, seq))

    def _apply_open(
        self,
        slot: KeySlot,
        flow: CompiledFlow,
        inst: InstanceState,
        event: Event,
        now: int,
        out: list[Effect],
    ) -> None:
        ref = (event.source, event.type)
        err = flow.error_index.get(ref)
        if err is not None:
            h = event_hash(event.id)
            if h in inst.error_ids:
                return
            inst.error_ids.append(h)
            handler = flow.errors[err].handler
            dev = _Deviation("error", None, None, event.time, event.id, handler, event.type)
            self._raise(slot, flow, inst, dev, now, out)
            if handler.then is not None:
                self._switch(slot, flow, inst, handler.then, event.time, event.id, now, out)
            return
        candidates = flow.step_index.get(ref)
        if candidates is not None and len(candidates) == 1:  # the usual case, inlined
            idx = candidates[0]
            step = None if idx in inst.observed else flow.steps[idx]
        else:
            step = self._pick_step(flow, inst, ref, event)
        if step is None:
            note = f"{event.type} {event.id}: step already observed"
            out.append(Signal("recorded", flow.name, inst.version, slot.key, note, None, now))
            return
        self._observe_and_judge(slot, flow, inst, step, event, now, out)
        self._check_complete(slot, flow, inst, event.time, event.id, now, out)

    def _apply_ended(
        self,
        slot: KeySlot,
        flow: CompiledFlow,
        inst: InstanceState,
        event: Event,
        now: int,
        out: list[Effect],
    ) -> None:
        """After the end: record; a late step event still raises `late`; nothing else."""
        step = self._pick_step(flow, inst, (event.source, event.type), event)
        if step is None:
            out.append(
                Signal(
                    "recorded",
                    flow.name,
                    inst.version,
                    slot.key,
                    f"{event.type} after the end",
                    None,
                    now,
                )
            )
            return
        self._observe(flow, inst, step, event)
        deadline = self.deadline(flow, inst, step)
        if deadline is not None and event.time > deadline:
            inst.flags[step.index] = inst.flags.get(step.index, 0) | F_LATE
            dev = _Deviation("late", step, deadline, event.time, event.id, step.if_late)
            self._raise(slot, flow, inst, dev, now, out)
        else:
            out.append(
                Signal(
                    "recorded",
                    flow.name,
                    inst.version,
                    slot.key,
                    f"{event.type} after the end",
                    step.name,
                    now,
                )
            )

    def _pick_step(
        self, flow: CompiledFlow, inst: InstanceState, ref: tuple[str, str], event: Event
    ) -> CompiledStep | None:
        """The step an event satisfies: an unobserved one of the current path first, then any
        unobserved one; None when every candidate is observed (a duplicate or a repeat)."""
        candidates = flow.step_index.get(ref)
        if not candidates:
            return None
        if len(candidates) > 1:
            h = event_hash(event.id)
            if any(inst.ids.get(i) == h for i in candidates):
                return None  # this very event was applied already
        fallback = None
        for idx in candidates:
            if idx not in inst.observed:
                step = flow.steps[idx]
                if step.path == inst.path:
                    return step
                if fallback is None:
                    fallback = step
        return fallback

    @staticmethod
    def _observe(flow: CompiledFlow, inst: InstanceState, step: CompiledStep, event: Event) -> None:
        idx = step.index
        inst.observed[idx] = event.time
        if step.shares_on:  # only then can one event id satisfy two steps; remember it
            inst.ids[idx] = event_hash(event.id)
        if step.captures:
            caps = event.captures
            inst.captured[idx] = [caps.get(sel) for sel in step.capture_names]

    def _observe_and_judge(
        self,
        slot: KeySlot,
        flow: CompiledFlow,
        inst: InstanceState,
        step: CompiledStep,
        event: Event,
        now: int,
        out: list[Effect],
    ) -> None:
        # _observe, inlined: this runs for nearly every event
        idx = step.index
        observed = inst.observed
        t = event.time
        observed[idx] = t
        if step.shares_on:
            inst.ids[idx] = event_hash(event.id)
        if step.captures:
            caps = event.captures
            inst.captured[idx] = [caps.get(sel) for sel in step.capture_names]
        anchors = step.anchors
        current = step.path == inst.path  # before a late handler may switch paths
        # late: its own deadline, if known now (_judge_late decides once it may be late)
        within = step.within_ms
        if within is not None:
            anchor: int | None = None
            if anchors:
                for a in anchors:
                    ta = observed.get(a)
                    if ta is None:
                        anchor = None
                        break
                    if anchor is None or ta > anchor:
                        anchor = ta
            else:
                anchor = inst.entries.get(step.path)
            if anchor is not None and t > anchor + within:
                self._judge_late(slot, flow, inst, step, event.id, now, out)
        # out of order against its own anchors
        if current and anchors:
            for a in anchors:
                ta = observed.get(a)
                if ta is not None and t < ta:
                    self._out_of_order(slot, flow, inst, step, flow.steps[a], event.id, now, out)
                    break
        # steps anchored at this one: now judged (out of order, or late now that armed)
        for d in step.dependents:
            other = flow.steps[d]
            if other.index in inst.observed:
                if other.path == inst.path and inst.observed[other.index] < t:
                    self._out_of_order(slot, flow, inst, other, step, event.id, now, out)
                self._judge_late(slot, flow, inst, other, event.id, now, out)

    def _judge_late(
        self,
        slot: KeySlot,
        flow: CompiledFlow,
        inst: InstanceState,
        step: CompiledStep,
        trigger: str,
        now: int,
        out: list[Effect],
    ) -> None:
        idx = step.index
        if step.within_ms is None:
            return
        t = inst.observed.get(idx)
        if t is None:
            return
        anchor = self.anchor_time(flow, inst, step)
        if anchor is None or t <= anchor + step.within_ms:
            return
        deadline = anchor + step.within_ms
        f = inst.flags.get(idx, 0)
        if f & F_LATE:
            return
        inst.flags[idx] = f | F_LATE
        dev = _Deviation("late", step, deadline, t, trigger, step.if_late)
        self._raise(slot, flow, inst, dev, now, out)
        if step.if_late.then is not None:
            self._switch(slot, flow, inst, step.if_late.then, t, trigger, now, out)

    def _out_of_order(
        self,
        slot: KeySlot,
        flow: CompiledFlow,
        inst: InstanceState,
        step: CompiledStep,
        anchor: CompiledStep,
        trigger: str,
        now: int,
        out: list[Effect],
    ) -> None:
        idx = step.index
        f = inst.flags.get(idx, 0)
        if f & F_OUT_OF_ORDER:
            return
        inst.flags[idx] = f | F_OUT_OF_ORDER
        dev = _Deviation(
            "out_of_order",
            step,
            self.deadline(flow, inst, step),
            inst.observed[idx],
            trigger,
            step.if_out_of_order,
            anchor.name,
        )
        self._raise(slot, flow, inst, dev, now, out)
        h = step.if_out_of_order
        if h is not None and h.then is not None:
            self._switch(slot, flow, inst, h.then, inst.observed[idx], trigger, now, out)

    # -- timers -----------------------------------------------------------------------------------

    def _fire(self, slot: KeySlot, timer: Timer, now: int, out: list[Effect]) -> None:
        due = timer.due
        inst = slot.instance
        if timer.kind == T_ORPHAN:
            flow = self.registry.newest(slot.flow)
            keep = []
            for b in slot.buffer:
                if b.read_at + flow.buffer_ms == due and b.seq == timer.rank:
                    self._orphan(slot, flow, b, due, now, out)
                else:
                    keep.append(b)
            slot.buffer = keep
            return
        assert inst is not None
        flow = self._flow_of(slot, inst)
        if timer.kind == T_RETAIN:
            slot.instance = None
            out.append(
                Signal("recorded", flow.name, inst.version, slot.key, "retention ended", None, now)
            )
            return
        if timer.kind == T_EXPIRE:
            self._end(slot, flow, inst, "expired", due, f"expire@{due}/{inst.started_at}", now, out)
            return
        if timer.kind == T_SLO:  # still open when its SLO's `within` passed: bad, counted now
            inst.sla |= SLO_JUDGED
            elapsed = due - inst.started_at
            out.append(Signal("slo", flow.name, inst.version, slot.key, "bad", None, now, elapsed))
            return
        # the instance's start is part of the trigger: a key reused after `retain` is another
        # instance, and its records must not share ids with the first one's
        trigger = f"timer:{timer.kind}:{timer.step}@{due}/{inst.started_at}"
        if timer.kind in (T_WARN, T_MISSING):
            step = flow.steps[timer.step]
            deadline = self.deadline(flow, inst, step)
            if timer.kind == T_WARN:
                inst.flags[step.index] = inst.flags.get(step.index, 0) | F_WARNED
                dev = _Deviation("warning", step, deadline, None, trigger, step.if_warning)
            else:
                inst.flags[step.index] = inst.flags.get(step.index, 0) | F_MISSING
                dev = _Deviation("missing", step, deadline, None, trigger, step.if_missing)
        else:
            sla = flow.sla
            assert sla is not None
            deadline = inst.started_at + sla.within_ms
            if timer.kind == T_SLA_WARN:
                inst.sla |= SLA_WARNED
                dev = _Deviation("sla_warning", None, deadline, None, trigger, sla.if_warning)
            else:
                inst.sla |= SLA_BREACHED
                dev = _Deviation("sla_breach", None, deadline, None, trigger, sla.if_breached)
        self._raise(slot, flow, inst, dev, now, out)
        if dev.handler is not None and dev.handler.then is not None:
            self._switch(slot, flow, inst, dev.handler.then, due, trigger, now, out)

    def _orphan(
        self,
        slot: KeySlot,
        flow: CompiledFlow,
        b: BufferedEvent,
        due: int,
        now: int,
        out: list[Effect],
    ) -> None:
        ev = b.event
        ref = (ev.source, ev.type)
        step_idx = flow.step_index.get(ref)
        step = flow.steps[step_idx[0]] if step_idx else None
        dev = _Deviation("orphaned", step, due, ev.time, f"orphan:{ev.id}", None, ev.type)
        self._publish_deviation(slot.key, flow, flow.version, None, dev, now, out)

    # -- transitions ------------------------------------------------------------------------------

    def _switch(
        self,
        slot: KeySlot,
        flow: CompiledFlow,
        inst: InstanceState,
        path: int,
        at: int,
        trigger: str,
        now: int,
        out: list[Effect],
    ) -> None:
        if not inst.open or inst.path == path:
            return
        inst.path = path
        inst.entries[path] = at
        out.append(
            Signal(
                "recorded",
                flow.name,
                inst.version,
                slot.key,
                f"switched to path {flow.paths[path].name}",
                None,
                now,
            )
        )
        self._check_complete(slot, flow, inst, at, trigger, now, out)

    def _check_complete(
        self,
        slot: KeySlot,
        flow: CompiledFlow,
        inst: InstanceState,
        at: int,
        trigger: str,
        now: int,
        out: list[Effect],
    ) -> None:
        if inst.outcome is not None:
            return
        path = flow.paths[inst.path]
        observed = inst.observed
        if len(observed) < len(path.required):
            return  # cannot hold every required step yet
        for idx in path.required:
            if idx not in observed:
                return
        ended = max([at, *observed.values()])
        self._end(slot, flow, inst, path.outcome, ended, f"end/{inst.started_at}", now, out)

    def _end(
        self,
        slot: KeySlot,
        flow: CompiledFlow,
        inst: InstanceState,
        outcome: str,
        ended_at: int,
        trigger: str,
        now: int,
        out: list[Effect],
    ) -> None:
        inst.outcome = outcome
        inst.ended_at = ended_at
        steps = {flow.steps[i].name: format_time(t) for i, t in sorted(inst.observed.items())}
        record = {
            "flow": flow.name,
            "version": inst.version,
            "key": slot.key,
            "outcome": outcome,
            "started_at": format_time(inst.started_at),
            "ended_at": format_time(ended_at),
            "duration_ms": ended_at - inst.started_at,
            "steps": steps,
            "deviations": [DEVIATION_KINDS[k] for k, _ in inst.deviations],
        }
        oid = observer_id(flow.name, inst.version, slot.key, trigger, None, "outcome")
        out.append(
            Publish("outcome", self.topics.outcomes, slot.key, record, (("observer-id", oid),), oid)
        )
        out.append(
            Signal(
                "ended",
                flow.name,
                inst.version,
                slot.key,
                outcome,
                None,
                now,
                ended_at - inst.started_at,
            )
        )
        slo = flow.slo
        if slo is not None and not inst.sla & SLO_JUDGED:
            took = ended_at - inst.started_at
            good = outcome == "completed" and took <= slo.within_ms
            judged = "good" if good else "bad"
            out.append(Signal("slo", flow.name, inst.version, slot.key, judged, None, now, took))

    # -- deviations and handlers --------------------------------------------------------------------

    def _raise(
        self,
        slot: KeySlot,
        flow: CompiledFlow,
        inst: InstanceState,
        dev: _Deviation,
        now: int,
        out: list[Effect],
    ) -> None:
        inst.deviations.append((_KIND[dev.kind], dev.step.index if dev.step else -1))
        self._publish_deviation(slot.key, flow, inst.version, inst, dev, now, out)

    def _publish_deviation(
        self,
        key: str,
        flow: CompiledFlow,
        version: int,
        inst: InstanceState | None,
        dev: _Deviation,
        now: int,
        out: list[Effect],
    ) -> None:
        step_name = dev.step.name if dev.step else None
        out.append(Signal("deviation", flow.name, version, key, dev.kind, step_name, now))
        if dev.kind == "out_of_order" and dev.handler is None:
            return  # recorded only
        handler = dev.handler
        late_by = (
            dev.observed_at - dev.deadline
            if dev.kind == "late" and dev.deadline is not None and dev.observed_at is not None
            else None
        )
        deviation_ctx = {
            "kind": dev.kind,
            "step": step_name,
            "deadline": format_time(dev.deadline) if dev.deadline is not None else None,
            "observed_at": format_time(dev.observed_at) if dev.observed_at is not None else None,
            "late_by": format_duration(late_by) if late_by is not None else None,
            "late_by_ms": late_by,
        }
        ctx = self._template_context(flow, key, version, inst, now, deviation_ctx)
        severity = (handler.severity if handler else None) or _DEFAULT_SEVERITY.get(
            dev.kind, "warning"
        )
        summary = None
        if handler is not None and handler.summary is not None:
            rendered = handler.summary(ctx)
            summary = rendered if isinstance(rendered, str) else str(rendered)
        if summary is None:
            summary = _default_summary(flow, key, dev, deviation_ctx)
        alert = {
            "flow": flow.name,
            "version": version,
            "key": key,
            "kind": dev.kind,
            "step": step_name,
            "severity": severity,
            "deadline": deviation_ctx["deadline"],
            "observed_at": deviation_ctx["observed_at"],
            "detected_at": format_time(now),
            "late_by_ms": late_by,
            "summary": summary,
        }
        base = (flow.name, version, key, dev.trigger, step_name)
        if handler is None or handler.alert:
            oid = observer_id(*base, f"alert:{dev.kind}")
            out.append(
                Publish("alert", self.topics.alerts, key, alert, (("observer-id", oid),), oid)
            )
        if handler is None:
            return
        for i, action in enumerate(handler.actions):
            if action.kind == "alert":
                continue
            oid = observer_id(*base, f"action:{dev.kind}:{i}:{action.name}")
            if action.kind == "webhook":
                copy = dict(alert)
                if action.severity is not None:
                    copy["severity"] = action.severity
                out.append(
                    Publish(
                        "webhook", None, key, copy, (("observer-id", oid),), oid, webhook=action.url
                    )
                )
                continue
            assert action.topic is not None and action.value is not None
            topic = action.topic(ctx)
            rkey = action.key(ctx) if action.key is not None else None
            headers = action.headers(ctx) if action.headers is not None else {}
            hdrs = (
                *tuple((str(k), _header_text(v)) for k, v in headers.items()),
                ("observer-id", oid),
            )
            out.append(
                Publish(
                    "action",
                    str(topic),
                    None if rkey is None else _header_text(rkey),
                    action.value(ctx),
                    hdrs,
                    oid,
                    avro_schema=action.avro_schema,
                )
            )

    def _template_context(
        self,
        flow: CompiledFlow,
        key: str,
        version: int,
        inst: InstanceState | None,
        now: int,
        deviation: Mapping[str, Any],
    ) -> dict[str, Any]:
        steps: dict[str, Any] = {}
        if inst is not None:
            captured = inst.captured
            for idx, t in inst.observed.items():
                data: dict[str, Any] = {"time": format_time(t)}
                step = flow.steps[idx]
                values = captured.get(idx)
                if isinstance(values, dict):  # state decoded from format 1
                    for sel, value in values.items():
                        _nest(data, sel.split("."), value)
                elif values:
                    for parts, value in zip(step.capture_parts, values, strict=False):
                        _nest(data, parts, value)
                steps[step.name] = data
        ctx: dict[str, Any] = {
            "key": key,
            "flow": flow.name,
            "version": version,
            "now": format_time(now),
            "instance": {"started_at": format_time(inst.started_at) if inst else None},
            "steps": steps,
            "deviation": deviation,
        }
        ctx[flow.key_name] = key
        return ctx


def _read_order(b: BufferedEvent) -> tuple[int, int]:
    return (b.read_at, b.seq)


def _nest(target: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    node = target
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def _header_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return ""
    import orjson

    return (
        orjson.dumps(v).decode()
        if isinstance(v, dict | list)
        else (str(v).lower() if isinstance(v, bool) else str(v))
    )


def _default_summary(flow: CompiledFlow, key: str, dev: _Deviation, d: Mapping[str, Any]) -> str:
    who = f"{flow.name} {key}"
    step = dev.step.name if dev.step else ""
    match dev.kind:
        case "missing":
            return f"{who}: step '{step}' missing (deadline {d['deadline']})"
        case "warning":
            return f"{who}: step '{step}' not observed yet (deadline {d['deadline']})"
        case "late":
            return f"{who}: step '{step}' late by {d['late_by']}"
        case "error":
            return f"{who}: error event {dev.detail}"
        case "sla_warning":
            return f"{who}: SLA deadline {d['deadline']} approaching"
        case "sla_breach":
            return f"{who}: SLA breached (deadline {d['deadline']})"
        case "out_of_order":
            return f"{who}: step '{step}' happened before its anchor '{dev.detail}'"
        case _:
            return f"{who}: {dev.detail} event never matched an instance (buffer ran out {d['deadline']})"
