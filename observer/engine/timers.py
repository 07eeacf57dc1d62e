"""When a slot next needs the engine: the anchor rule, step deadlines and the pending timers.

`anchor_of` is the one statement of when a step's window starts (the deadlines, the timers and
the judging of late events all use it). `_open_timers` is the one definition of an open
instance's timers: it lists them for the ops API (`pending_timers`, `timers`) and, without
building the list, finds the first for the runtime (`next_due`, run for every slot written;
`next_timer`, for firing). Times are epoch ms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from observer.engine.state import (
    F_MISSING,
    F_WARNED,
    SLA_BREACHED,
    SLA_WARNED,
    SLO_JUDGED,
    InstanceState,
    KeySlot,
)
from observer.flows.compiled import CompiledFlow, CompiledStep

__all__ = [
    "LIFECYCLE_KINDS",
    "PendingTimer",
    "Timer",
    "TimerKind",
    "anchor_of",
    "anchor_time",
    "deadline",
    "next_due",
    "next_timer",
    "pending_timers",
    "timers",
]


class TimerKind(IntEnum):
    """What a timer decides when it fires. The values are part of published record ids (a
    timer's trigger names its kind by number): never renumber them."""

    WARN = 0  # a step's warn point
    MISSING = 1  # a step's deadline
    SLA_WARN = 2
    SLA_BREACH = 3
    EXPIRE = 4  # the instance gives up (flow `expire`)
    RETAIN = 5  # an ended instance is forgotten (flow `retain`)
    ORPHAN = 6  # an early event's buffer time ran out
    SLO = 7  # the flow's `slo: within` passed: an instance still open counts as bad


# expire, retain and the SLO's point: the instance's lifecycle, not a deviation (replay fires
# them only when --until reaches them; the SLO's point publishes nothing)
LIFECYCLE_KINDS = frozenset({TimerKind.EXPIRE, TimerKind.RETAIN, TimerKind.SLO})

# members bound once: an enum attribute lookup costs more than building the timer
_WARN, _MISSING, _SLA_WARN, _SLA_BREACH, _EXPIRE, _RETAIN, _ORPHAN, _SLO = TimerKind
_INSTANCE_KINDS = (_SLA_WARN, _SLA_BREACH, _EXPIRE, _SLO)  # by rank, after the steps' timers

PendingTimer = tuple[int, int, TimerKind, int]
"""(due, rank, kind, step or -1): ranks are unique among a slot's timers, so these tuples sort
like `Timer`s (and cost less to build)."""


@dataclass(frozen=True, slots=True, order=True)
class Timer:
    """A pending timer of a slot: `due` (ms), a rank that orders ties, its kind and step."""

    due: int
    rank: int
    kind: TimerKind
    step: int = -1


def anchor_of(
    anchors: tuple[int, ...], observed: Mapping[int, int], entries: Mapping[int, int], path: int
) -> int | None:
    """The anchor rule: a step's window starts at the latest of its `anchors`' times (None while
    one is not observed), or, with no anchors, when its `path` was entered (None: not yet)."""
    if not anchors:
        return entries.get(path)
    latest = None
    for a in anchors:
        t = observed.get(a)
        if t is None:
            return None
        if latest is None or t > latest:
            latest = t
    return latest


def anchor_time(inst: InstanceState, step: CompiledStep) -> int | None:
    """When the step's window starts (see `anchor_of`)."""
    return anchor_of(step.anchors, inst.observed, inst.entries, step.path)


def deadline(inst: InstanceState, step: CompiledStep) -> int | None:
    """The step's deadline (ms), if it has a window and its anchors are observed."""
    if step.within_ms is None:
        return None
    anchor = anchor_of(step.anchors, inst.observed, inst.entries, step.path)
    return None if anchor is None else anchor + step.within_ms


def pending_timers(flow: CompiledFlow, slot: KeySlot, lifecycle: bool) -> list[PendingTimer]:
    """Every timer of the slot, unordered; without `lifecycle`, leaving out expire and retain.

    `flow` governs the slot (its instance's version, or the newest for early events). Early
    events each have an orphan timer; an ended instance has its retain timer; an open one has
    a warn and a deadline timer per required step of its path whose window has started and
    that did not fire yet, its SLA timers and its expire timer.
    """
    inst = slot.instance
    if inst is None:
        buffer_ms = flow.buffer_ms
        return [(b.read_at + buffer_ms, b.seq, _ORPHAN, -1) for b in slot.buffer]
    if inst.outcome is not None:
        return [_retain(flow, inst)] if lifecycle else []
    every: list[tuple[int, int]] = []
    _open_timers(flow, inst, lifecycle, every)
    return [_timer(flow, due, rank) for due, rank in every]


def next_timer(flow: CompiledFlow, slot: KeySlot, lifecycle: bool) -> PendingTimer | None:
    """The first of `pending_timers` (soonest; ties in declaration order), without building
    them all: this runs for every slot written."""
    inst = slot.instance
    if inst is None:
        pending = pending_timers(flow, slot, lifecycle)
        return min(pending) if pending else None
    if inst.outcome is not None:
        return _retain(flow, inst) if lifecycle else None
    first = _open_timers(flow, inst, lifecycle, None)
    return None if first is None else _timer(flow, *first)


def next_due(flow: CompiledFlow, slot: KeySlot, lifecycle: bool) -> int | None:
    """When the first of `pending_timers` is due (None: no timer)."""
    inst = slot.instance
    if inst is not None and inst.outcome is None:  # the usual case: only the time is needed
        first = _open_timers(flow, inst, lifecycle, None)
        return None if first is None else first[0]
    timer = next_timer(flow, slot, lifecycle)
    return None if timer is None else timer[0]


def timers(flow: CompiledFlow, slot: KeySlot) -> list[Timer]:
    """Every pending timer of the slot, soonest first (ties in declaration order)."""
    return [Timer(*t) for t in sorted(pending_timers(flow, slot, True))]


def _retain(flow: CompiledFlow, inst: InstanceState) -> PendingTimer:
    assert inst.ended_at is not None
    return (inst.ended_at + flow.retain_ms, 0, _RETAIN, -1)


def _open_timers(
    flow: CompiledFlow, inst: InstanceState, lifecycle: bool, every: list[tuple[int, int]] | None
) -> tuple[int, int] | None:
    """The timers of an open instance as (due, rank), each appended to `every` when given;
    returns the first (soonest, then lowest rank).

    Ranks: 2*step for a warn point, 2*step + 1 for a deadline, then after every step's the SLA
    warn point, the SLA deadline, expire and the SLO's point (`_timer` turns a rank back into kind and step).
    Timers are visited in rank order, so a later one is first only when strictly sooner.
    """
    first_due: int | None = None
    first_rank = -1
    observed = inst.observed
    entries = inst.entries
    flags = inst.flags
    path = inst.path  # the path of each of its steps
    for idx, anchors, within, warn in flow.timed[path]:  # in step order
        if idx in observed:
            continue
        # = anchor_of(anchors, observed, entries, path), its usual cases inlined (a call per
        # pending step of every slot written costs more than the lines)
        if len(anchors) == 1:
            anchor = observed.get(anchors[0])
        elif not anchors:
            anchor = entries.get(path)
        else:
            anchor = anchor_of(anchors, observed, entries, path)
        if anchor is None:
            continue
        f = flags.get(idx, 0)
        if warn is not None and not f & F_WARNED:
            due = anchor + warn
            if every is not None:
                every.append((due, 2 * idx))
            if first_due is None or due < first_due:
                first_due, first_rank = due, 2 * idx
        if not f & F_MISSING:
            due = anchor + within
            if every is not None:
                every.append((due, 2 * idx + 1))
            if first_due is None or due < first_due:
                first_due, first_rank = due, 2 * idx + 1
    n = len(flow.steps) * 2
    sla = flow.sla
    if sla is not None:
        if sla.warn_ms is not None and not inst.sla & (SLA_WARNED | SLA_BREACHED):
            due = inst.started_at + sla.warn_ms
            if every is not None:
                every.append((due, n))
            if first_due is None or due < first_due:
                first_due, first_rank = due, n
        if not inst.sla & SLA_BREACHED:
            due = inst.started_at + sla.within_ms
            if every is not None:
                every.append((due, n + 1))
            if first_due is None or due < first_due:
                first_due, first_rank = due, n + 1
    if lifecycle:
        due = inst.started_at + flow.expire_ms
        if every is not None:
            every.append((due, n + 2))
        if first_due is None or due < first_due:
            first_due, first_rank = due, n + 2
        slo = flow.slo
        if slo is not None and not inst.sla & SLO_JUDGED:
            due = inst.started_at + slo.within_ms
            if every is not None:
                every.append((due, n + 3))
            if first_due is None or due < first_due:
                first_due, first_rank = due, n + 3
    return None if first_due is None else (first_due, first_rank)


def _timer(flow: CompiledFlow, due: int, rank: int) -> PendingTimer:
    """An open instance's timer from its due time and rank (see `_open_timers`)."""
    n = len(flow.steps) * 2
    if rank < n:
        return (due, rank, _MISSING if rank & 1 else _WARN, rank >> 1)
    return (due, rank, _INSTANCE_KINDS[rank - n], -1)
