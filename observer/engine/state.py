"""What the engine keeps per (flow, key): the instance (open or retained) or early events.

Step state is held in small dicts keyed by step index; flags are bit sets. `codec.py` turns a
`KeySlot` into compact bytes for Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ALIAS_CONFLICT",
    "ALIAS_HELD",
    "ALIAS_PENDING",
    "DEVIATION_KINDS",
    "F_LATE",
    "F_MISSING",
    "F_OUT_OF_ORDER",
    "F_WARNED",
    "SLA_BREACHED",
    "SLA_WARNED",
    "SLO_JUDGED",
    "AliasHold",
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
SLO_JUDGED = 4  # counted bad for the flow's SLO while still open (its `within` passed)
# what an instance knows of an alias value it registered (aliases: correlation by a second id)
ALIAS_PENDING = 0  # asked for, no answer yet: the instance fires no timer meanwhile
ALIAS_HELD = 1  # the instance holds the value
ALIAS_CONFLICT = 2  # another open instance held it: not taken

DEVIATION_KINDS = (
    "missing",
    "warning",
    "late",
    "error",
    "sla_warning",
    "sla_breach",
    "out_of_order",
    "orphaned",
    "alias_conflict",  # aliases: appended, the indices above are stored in instance state
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


@dataclass(slots=True, init=False)
class InstanceState:
    """One process instance. Times are epoch ms of event time; step keys are step indices."""

    version: int
    started_at: int
    path: int
    entries: dict[int, int]  # path -> entry time
    observed: dict[int, int]  # step -> event time
    ids: dict[int, int]  # step -> crc32 of event id
    flags: dict[int, int]  # step -> F_* bits
    captured: dict[int, list[Any]]  # step -> values in the order of its `capture_names`
    error_ids: list[int]  # crc32 of applied error event ids
    sla: int  # SLA_* bits
    deviations: list[tuple[int, int]]  # (kind index, step or -1)
    outcome: str | None
    ended_at: int | None
    aliases: dict[int, tuple[str, int]]  # alias index -> (value, ALIAS_* status)

    def __init__(
        self,
        version: int,
        started_at: int,
        path: int = 0,
        entries: dict[int, int] | None = None,
        observed: dict[int, int] | None = None,
        ids: dict[int, int] | None = None,
        flags: dict[int, int] | None = None,
        captured: dict[int, list[Any]] | None = None,
        error_ids: list[int] | None = None,
        sla: int = 0,
        deviations: list[tuple[int, int]] | None = None,
        outcome: str | None = None,
        ended_at: int | None = None,
        aliases: dict[int, tuple[str, int]] | None = None,
    ) -> None:
        # written out: the generated __init__ with seven default factories costs 3x as much,
        # once per instance started or decoded
        self.version = version
        self.started_at = started_at
        self.path = path
        self.entries = {} if entries is None else entries
        self.observed = {} if observed is None else observed
        self.ids = {} if ids is None else ids
        self.flags = {} if flags is None else flags
        self.captured = {} if captured is None else captured
        self.error_ids = [] if error_ids is None else error_ids
        self.sla = sla
        self.deviations = [] if deviations is None else deviations
        self.outcome = outcome
        self.ended_at = ended_at
        self.aliases = {} if aliases is None else aliases

    @property
    def open(self) -> bool:
        return self.outcome is None


@dataclass(slots=True)
class AliasHold:
    """Who holds an alias value: the instance of `key` that started at `started` (a key reused
    after `retain` is another instance), and whether it is still open (an ended holder keeps
    the value until its key is freed, but a new open instance may take it)."""

    key: str
    started: int
    open: bool = True


@dataclass(slots=True)
class KeySlot:
    """Everything the observer holds for one (flow, key). An alias slot (`flow` is
    `<flow>/<alias>`, `key` an alias value) holds no instance: its holder, if any, and the
    events that came via the value before anyone held it."""

    flow: str
    key: str
    instance: InstanceState | None = None
    buffer: list[BufferedEvent] = field(default_factory=list)
    hold: AliasHold | None = None  # alias slots only

    @property
    def empty(self) -> bool:
        return self.instance is None and not self.buffer and self.hold is None
