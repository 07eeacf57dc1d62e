"""The parts of a batch the planner (`batch.py`) works with: one slot's work and the plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from observer.correlation import Count
from observer.engine.effects import Publish, Signal
from observer.engine.state import KeySlot
from observer.flows.compiled import CompiledFlow
from observer.runtime.outbox import OutboxRecord
from observer.runtime.ports import SlotPut, WriteBatch

__all__ = ["BatchPlan", "SlotWork", "observed_counts"]


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


def observed_counts(flow: CompiledFlow) -> tuple[Count, ...]:
    """The correlation-health count of each step of `flow` observed (by step index), built
    once per compiled flow rather than once per event."""
    hit = _OBSERVED_COUNTS.get(id(flow))
    if hit is None or hit[0] is not flow:
        keys = tuple(("step", flow.name, step.name, "observed") for step in flow.steps)
        if len(_OBSERVED_COUNTS) > 1000:  # flows redeployed many times: start again
            _OBSERVED_COUNTS.clear()
        hit = _OBSERVED_COUNTS[id(flow)] = (flow, keys)
    return hit[1]


class SlotWork:
    """One slot in a batch: its stored bytes (to rebuild from), the live state, what was done."""

    __slots__ = (
        "dirty",
        "due_override",
        "effects",
        "ops",
        "original",
        "put",
        "shard",
        "sid",
        "slot",
    )

    def __init__(self, sid: str, shard: int, original: bytes | None, slot: KeySlot | None) -> None:
        self.sid = sid
        self.shard = shard
        self.original = original
        self.slot = slot  # None: unreadable
        # ("apply", (Event, watermark)) | ("deliver", (Hop, watermark)) | ("fire", watermark)
        self.ops: list[tuple[str, Any]] = []
        self.effects: list[Publish | Signal] = []  # rendered into history entries by `finish`
        self.dirty = False
        self.due_override: int | None = None
        self.put: SlotPut | None = None  # planned after its last event, while in the CPU cache
