"""The instance state machine: start, observe, judge (late, out of order), switch path, complete,
end, and what a timer decides when it fires.

Every transition works on one `Turn` (one engine call on one slot) and adds its effects to
`turn.out`; the records themselves are rendered by `alerts`, deadlines come from `timers`.
"""

from __future__ import annotations

from observer.engine import aliases
from observer.engine.alerts import Deviation, deviation_effects, outcome_effects
from observer.engine.budget import early_event_refused
from observer.engine.effects import Effect, Hop, Signal
from observer.engine.ids import event_hash
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
from observer.engine.timers import TimerKind, anchor_of, deadline
from observer.flows.compiled import CompiledFlow, CompiledHandler, CompiledStep
from observer.topics import Topics

__all__ = [
    "Turn",
    "apply_to_ended",
    "apply_to_open",
    "buffer_early",
    "fire_instance_timer",
    "orphan",
    "receive",
    "start",
]

_KIND = {k: i for i, k in enumerate(DEVIATION_KINDS)}


class Turn:
    """One engine call on one slot that holds an instance: the slot, its instance, the flow
    version that governs it, the observer's time (`now`, ms), the watermark when an event is
    observed (`watermark`: how late a step observed after its `missing` is), where records go,
    and the effects produced so far (`out`)."""

    __slots__ = ("flow", "inst", "now", "out", "slot", "topics", "watermark")

    slot: KeySlot
    inst: InstanceState
    flow: CompiledFlow
    now: int
    topics: Topics
    out: list[Effect]
    watermark: int

    def __init__(
        self,
        slot: KeySlot,
        inst: InstanceState,
        flow: CompiledFlow,
        now: int,
        topics: Topics,
        out: list[Effect],
        watermark: int | None = None,
    ) -> None:
        self.slot = slot
        self.inst = inst
        self.flow = flow
        self.now = now
        self.topics = topics
        self.out = out
        self.watermark = now if watermark is None else watermark

    def record(self, note: str, step: str | None = None) -> None:
        """A `recorded` signal: something the history keeps that is not a deviation."""
        inst = self.inst
        self.out.append(
            Signal("recorded", self.flow.name, inst.version, self.slot.key, note, step, self.now)
        )

    def raise_deviation(self, dev: Deviation) -> None:
        """Remember the deviation on the instance and publish what it calls for."""
        inst = self.inst
        inst.deviations.append((_KIND[dev.kind], dev.step.index if dev.step else -1))
        self.out += deviation_effects(self.flow, self.slot.key, inst, dev, self.now, self.topics)


# -- slots without an instance ------------------------------------------------------------------


def start(
    slot: KeySlot,
    flow: CompiledFlow,
    event: Event,
    now: int,
    topics: Topics,
    out: list[Effect],
    watermark: int | None = None,
) -> None:
    """Open an instance with its start event, then apply the early events buffered for it in
    event-time order."""
    inst = InstanceState(flow.version, event.time, 0, {0: event.time})
    slot.instance = inst
    turn = Turn(slot, inst, flow, now, topics, out, watermark)
    first = flow.start
    if flow.alias_from:
        aliases.register(turn, event)
    _observe(inst, first, event)
    out.append(Signal("started", flow.name, flow.version, slot.key, "", first.name, now))
    buffered = sorted(slot.buffer, key=lambda b: (b.event.time, b.seq)) if slot.buffer else ()
    slot.buffer = []
    for b in buffered:
        if inst.open:
            apply_to_open(turn, b.event)
        else:
            apply_to_ended(turn, b.event)
    _check_complete(turn, event.time)


def buffer_early(
    slot: KeySlot, flow: CompiledFlow, event: Event, now: int, limit: int, out: list[Effect]
) -> None:
    """Keep a step or error event that came before its instance's start (at most `limit`, and
    within the byte budget of early events)."""
    if any(b.event.id == event.id for b in slot.buffer):
        return
    refused = early_event_refused(slot.buffer, event, limit)  # count and byte budgets
    if refused is not None:
        out.append(Signal("dropped", flow.name, flow.version, slot.key, refused, None, now))
        return
    seq = slot.buffer[-1].seq + 1 if slot.buffer else 0
    slot.buffer.append(BufferedEvent(event, now, seq))


def orphan(
    slot: KeySlot,
    flow: CompiledFlow,
    due: int,
    seq: int,
    now: int,
    topics: Topics,
    alias: str | None = None,
) -> list[Effect]:
    """The orphan timer `(due, seq)` fired: its early events are dropped and alerted (`alias`:
    they came via that alias, whose value is the slot's key)."""
    out: list[Effect] = []
    keep = []
    for b in slot.buffer:
        if b.read_at + flow.buffer_ms == due and b.seq == seq:
            ev = b.event
            step_idx = flow.step_index.get((ev.source, ev.type))
            step = flow.steps[step_idx[0]] if step_idx else None
            dev = Deviation("orphaned", step, due, ev.time, f"orphan:{ev.id}", None, ev.type)
            dev.source, dev.at = ev.source, due
            if alias is not None:
                dev.extra = {"alias": alias}
            out += deviation_effects(flow, slot.key, None, dev, now, topics)
        else:
            keep.append(b)
    slot.buffer = keep
    return out


# -- events -------------------------------------------------------------------------------------


def apply_to_open(turn: Turn, event: Event) -> None:
    """An event for an open instance: an error runs its handler; a step event is observed and
    judged, with the steps anchored at it, and may complete the instance; a repeat is recorded.
    (One function: this runs for nearly every event, and a call costs more than most lines.)"""
    flow = turn.flow
    inst = turn.inst
    ref = (event.source, event.type)
    if flow.alias_from and ref in flow.alias_from:
        aliases.register(turn, event)
    candidates = flow.step_index.get(ref)  # a step's event is never an error's (compiler)
    if candidates is None:
        err = flow.error_index.get(ref)
        if err is not None:
            _apply_error(turn, flow.errors[err].handler, event)
            return
        if ref in flow.alias_from:  # only registers aliases: nothing more to do
            return
        step = None
    elif len(candidates) == 1:  # the usual case, inlined
        idx = candidates[0]
        step = None if idx in inst.observed else flow.steps[idx]
    else:
        step = _pick_step(flow, inst, ref, event)
    if step is None:
        turn.record(f"{event.type} {event.id}: step already observed")
        return
    current = step.path == inst.path  # before a late handler may switch paths
    # observe (as `_observe` does)
    idx = step.index
    observed = inst.observed
    t = event.time
    observed[idx] = t
    if step.shares_on:
        inst.ids[idx] = event_hash(event.id)
    if step.captures:
        inst.captured[idx] = list(map(event.captures.get, step.capture_names))
    # late: its own deadline, if known now (_judge_late decides once it may be late)
    anchors = step.anchors
    within = step.within_ms
    if within is not None:
        anchor = (
            observed.get(anchors[0])  # = anchor_of's usual case, inlined
            if len(anchors) == 1
            else anchor_of(anchors, observed, inst.entries, step.path)
        )
        if anchor is not None and t > anchor + within:
            _judge_late(turn, step, event.id, t)
        elif inst.flags and inst.flags.get(idx, 0) & F_MISSING:
            _late_by_arrival(turn, step, event.id)
    # out of order against its own anchors
    if current and anchors:
        for a in anchors:
            ta = observed.get(a)
            if ta is not None and t < ta:
                _out_of_order(turn, step, flow.steps[a], event.id, t)
                break
    # steps anchored at this one: now judged (out of order, or late now that armed)
    for d in step.dependents:
        other = flow.steps[d]
        if other.index in observed:
            if other.path == inst.path and observed[other.index] < t:
                _out_of_order(turn, other, step, event.id, t)
            _judge_late(turn, other, event.id, t)
    if len(observed) >= len(flow.paths[inst.path].required):  # else it cannot be complete
        _check_complete(turn, t)


def _apply_error(turn: Turn, handler: CompiledHandler, event: Event) -> None:
    """An error event: its handler runs once per event id, and may switch paths."""
    inst = turn.inst
    h = event_hash(event.id)
    if h in inst.error_ids:
        return
    inst.error_ids.append(h)
    t = event.time
    turn.raise_deviation(Deviation("error", None, None, t, event.id, handler, event.type, at=t))
    if handler.then is not None:
        _switch(turn, handler.then, event.time, event.id)


def apply_to_ended(turn: Turn, event: Event) -> None:
    """After the end: record; a late step event still raises `late`; nothing else."""
    inst = turn.inst
    step = _pick_step(turn.flow, inst, (event.source, event.type), event)
    if step is None:
        turn.record(f"{event.type} after the end")
        return
    _observe(inst, step, event)
    due = deadline(inst, step)
    if due is not None and event.time > due:
        inst.flags[step.index] = inst.flags.get(step.index, 0) | F_LATE
        t = event.time
        turn.raise_deviation(Deviation("late", step, due, t, event.id, step.if_late, at=t))
    elif due is not None and inst.flags.get(step.index, 0) & F_MISSING:
        _late_by_arrival(turn, step, event.id)
    else:
        turn.record(f"{event.type} after the end", step.name)


def _pick_step(
    flow: CompiledFlow, inst: InstanceState, ref: tuple[str, str], event: Event
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


def _observe(inst: InstanceState, step: CompiledStep, event: Event) -> None:
    idx = step.index
    inst.observed[idx] = event.time
    if step.shares_on:  # only then can one event id satisfy two steps; remember it
        inst.ids[idx] = event_hash(event.id)
    if step.captures:
        inst.captured[idx] = list(map(event.captures.get, step.capture_names))


def _judge_late(turn: Turn, step: CompiledStep, trigger: str, at: int) -> None:
    """Raise `late` once for an observed step past its deadline (`at`: the time of the event
    that decided it, the deviation's time for the guardrails)."""
    inst = turn.inst
    idx = step.index
    t = inst.observed.get(idx)
    if t is None:
        return
    due = deadline(inst, step)
    if due is None or t <= due:
        return
    f = inst.flags.get(idx, 0)
    if f & F_LATE:
        return
    inst.flags[idx] = f | F_LATE
    turn.raise_deviation(Deviation("late", step, due, t, trigger, step.if_late, at=at))
    if step.if_late.then is not None:
        _switch(turn, step.if_late.then, t, trigger)


def _late_by_arrival(turn: Turn, step: CompiledStep, trigger: str) -> None:
    """Raise `late` once for a step observed after its `missing` fired, on time by its event
    time (its producer stamped it late): late by the watermark at observation past the
    deadline (in replay, the virtual clock)."""
    inst = turn.inst
    idx = step.index
    f = inst.flags.get(idx, 0)
    due = deadline(inst, step)
    if f & F_LATE or due is None:
        return
    inst.flags[idx] = f | F_LATE
    t = inst.observed[idx]
    late_by = max(turn.watermark - due, 0)
    dev = Deviation("late", step, due, t, trigger, step.if_late, late_by=late_by, at=t)
    turn.raise_deviation(dev)
    if inst.open and step.if_late.then is not None:
        _switch(turn, step.if_late.then, t, trigger)


def _out_of_order(
    turn: Turn, step: CompiledStep, anchor: CompiledStep, trigger: str, at: int
) -> None:
    """Raise `out_of_order` once for a step observed before its `anchor` (`at`: as for late)."""
    inst = turn.inst
    idx = step.index
    f = inst.flags.get(idx, 0)
    if f & F_OUT_OF_ORDER:
        return
    inst.flags[idx] = f | F_OUT_OF_ORDER
    h = step.if_out_of_order
    t = inst.observed[idx]
    turn.raise_deviation(
        Deviation("out_of_order", step, deadline(inst, step), t, trigger, h, anchor.name, at=at)
    )
    if h is not None and h.then is not None:
        _switch(turn, h.then, t, trigger)


# -- timers -------------------------------------------------------------------------------------


def fire_instance_timer(turn: Turn, kind: TimerKind, step_idx: int, due: int) -> None:
    """A timer of the instance fired at `due`: retain forgets it, expire ends it, the others
    raise their deviation and run its handler."""
    slot = turn.slot
    inst = turn.inst
    flow = turn.flow
    if kind == TimerKind.RETAIN:
        if inst.aliases:
            aliases.free_aliases(turn)
        slot.instance = None
        turn.record("retention ended")
        return
    if kind == TimerKind.EXPIRE:
        _end(turn, "expired", due, f"expire@{due}/{inst.started_at}")
        return
    if kind == TimerKind.SLO:  # still open when its SLO's `within` passed: bad, counted now
        inst.sla |= SLO_JUDGED
        turn.out.append(
            Signal(
                "slo",
                flow.name,
                inst.version,
                slot.key,
                "bad",
                None,
                turn.now,
                due - inst.started_at,
            )
        )
        return
    # the instance's start is part of the trigger: a key reused after `retain` is another
    # instance, and its records must not share ids with the first one's
    trigger = f"timer:{int(kind)}:{step_idx}@{due}/{inst.started_at}"
    if kind in (TimerKind.WARN, TimerKind.MISSING):
        step = flow.steps[step_idx]
        step_due = deadline(inst, step)
        if kind == TimerKind.WARN:
            inst.flags[step.index] = inst.flags.get(step.index, 0) | F_WARNED
            dev = Deviation("warning", step, step_due, None, trigger, step.if_warning)
        else:
            inst.flags[step.index] = inst.flags.get(step.index, 0) | F_MISSING
            dev = Deviation("missing", step, step_due, None, trigger, step.if_missing)
    else:
        sla = flow.sla
        assert sla is not None
        sla_due = inst.started_at + sla.within_ms
        if kind == TimerKind.SLA_WARN:
            inst.sla |= SLA_WARNED
            dev = Deviation("sla_warning", None, sla_due, None, trigger, sla.if_warning)
        else:
            inst.sla |= SLA_BREACHED
            dev = Deviation("sla_breach", None, sla_due, None, trigger, sla.if_breached)
    dev.at = due  # the timer's own time: what the guardrails count it at
    turn.raise_deviation(dev)
    if dev.handler is not None and dev.handler.then is not None:
        _switch(turn, dev.handler.then, due, trigger)


# -- aliases ------------------------------------------------------------------------------------


def receive(turn: Turn, hop: Hop) -> None:
    """An alias slot's answer to this instance's register, or events that came via one of its
    alias values: the answer is taken (a conflict raises `alias_conflict`), the events applied
    in event-time order (reading order on ties), like early events at the start."""
    dev = aliases.take_answer(turn, hop)
    if dev is not None:
        turn.raise_deviation(dev)
        if dev.handler is not None and dev.handler.then is not None:
            _switch(turn, dev.handler.then, turn.now, dev.trigger)
        return
    for ev in sorted(hop.events, key=lambda e: e.time):
        if turn.inst.open:
            apply_to_open(turn, ev)
        else:
            apply_to_ended(turn, ev)


# -- paths and the end --------------------------------------------------------------------------


def _switch(turn: Turn, path: int, at: int, trigger: str) -> None:
    """Move an open instance to `path`, entered at `at` (the new path's steps anchor there)."""
    inst = turn.inst
    if not inst.open or inst.path == path:
        return
    inst.path = path
    inst.entries[path] = at
    turn.record(f"switched to path {turn.flow.paths[path].name}")
    _check_complete(turn, at)


def _check_complete(turn: Turn, at: int) -> None:
    """End the instance with its path's outcome once every required step is observed (at the
    latest of `at` and their times)."""
    inst = turn.inst
    if inst.outcome is not None:
        return
    path = turn.flow.paths[inst.path]
    observed = inst.observed
    if len(observed) < len(path.required):
        return  # cannot hold every required step yet
    for idx in path.required:
        if idx not in observed:
            return
    ended = max([at, *observed.values()])
    _end(turn, path.outcome, ended, f"end/{inst.started_at}")


def _end(turn: Turn, outcome: str, ended_at: int, trigger: str) -> None:
    """End the instance: its outcome record (its id made of `trigger`) and `ended` signal."""
    inst = turn.inst
    inst.outcome = outcome
    inst.ended_at = ended_at
    turn.out += outcome_effects(turn.flow, turn.slot.key, inst, trigger, turn.now, turn.topics)
    if inst.aliases:
        aliases.end_aliases(turn)
    slo = turn.flow.slo
    if slo is not None and not inst.sla & SLO_JUDGED:  # judged once, at its end
        took = ended_at - inst.started_at
        judged = "good" if outcome == "completed" and took <= slo.within_ms else "bad"
        turn.out.append(
            Signal("slo", turn.flow.name, inst.version, turn.slot.key, judged, None, turn.now, took)
        )
