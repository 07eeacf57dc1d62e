"""What the engine keeps per (flow, key): the instance (open or retained) or early events.

Step state is held in small dicts keyed by step index; flags are bit sets. `codec.py` turns a
`KeySlot` into compact bytes for Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEVIATION_KINDS",
    "F_LATE",
    "F_MISSING",
    "F_OUT_OF_ORDER",
    "F_WARNED",
    "SLA_BREACHED",
    "SLA_WARNED",
    "BufferedEvent",
    "Event",
    "InstanceState",
    "KeySlot",
]

# step flags
F_WARNED = 1
F_MISSING = 2
F_LATE = 4
F_OUT_OF_ORDER = 8
# instance-level flags
SLA_WARNED = 1
SLA_BREACHED = 2

DEVIATION_KINDS = (
    "missing",
    "warning",
    "late",
    "error",
    "sla_warning",
    "sla_breach",
    "out_of_order",
    "orphaned",
)


@dataclass(slots=True)
class Event:
    """One decoded source event, as the engine sees it. Times are epoch ms.

    `captures` holds the values of the selectors the flow captures on this event type.
    Treat it as immutable: it is not frozen only because a frozen dataclass costs about 1.4 µs
    more to build, once per event on the hot path.
    """

    source: str
    type: str
    key: str
    id: str
    time: int
    captures: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class BufferedEvent:
    """An early event waiting for its instance to start; `read_at` is when it was read (ms)."""

    event: Event
    read_at: int
    seq: int  # reading order, to keep ties stable


@dataclass(slots=True)
class InstanceState:
    """One process instance. Times are epoch ms of event time; step keys are step indices."""

    version: int
    started_at: int
    path: int = 0
    entries: dict[int, int] = field(default_factory=dict)  # path -> entry time
    observed: dict[int, int] = field(default_factory=dict)  # step -> event time
    ids: dict[int, int] = field(default_factory=dict)  # step -> crc32 of event id
    flags: dict[int, int] = field(default_factory=dict)  # step -> F_* bits
    # step -> captured values in the order of the step's `capture_names` (state decoded from
    # format 1 holds {selector: value} instead; the engine reads both)
    captured: dict[int, list[Any] | dict[str, Any]] = field(default_factory=dict)
    error_ids: list[int] = field(default_factory=list)  # crc32 of applied error event ids
    sla: int = 0  # SLA_* bits
    deviations: list[tuple[int, int]] = field(default_factory=list)  # (kind index, step or -1)
    outcome: str | None = None
    ended_at: int | None = None

    @property
    def open(self) -> bool:
        return self.outcome is None


@dataclass(slots=True)
class KeySlot:
    """Everything the observer holds for one (flow, key)."""

    flow: str
    key: str
    instance: InstanceState | None = None
    buffer: list[BufferedEvent] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.instance is None and not self.buffer
