"""The runtime's ports of the guardrails (contract §7): what a batch hands to them, what a
flow's decider reads and writes, and what operators do with held actions. Re-exported by
`ports.py`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["GatedAction", "GuardCommit", "GuardSnapshot", "HeldActions", "WaitingAdd"]


@dataclass(slots=True)
class WaitingAdd:
    """A deviation of a guarded flow waiting for the flow's decider (`held.StoredWaiting`),
    ordered by its time `at` (ms) and then its `id`."""

    flow: str
    at: int
    id: str
    data: bytes


@dataclass(slots=True)
class GatedAction:
    """An action record of a deviation the guardrails do not wait for: published unless its
    flow is paused (then held). History entries are appended to the instance's history if it
    has one: `published` or `held_history`."""

    flow: str
    action: str
    shard: int
    sid: str
    observer_id: str
    record: bytes  # the outbox record
    held: bytes  # the `HeldAction` kept if the flow is paused
    published: bytes
    held_history: bytes


@dataclass(slots=True)
class GuardSnapshot:
    """What a flow's decider reads in one request. `watermark`: the lowest watermark stored by
    the shards' owners (None while a shard has none); `waiting`: the deviations waiting with a
    time up to max(watermark, upto), in (time, id) order, at most the limit (`more`: there
    were more); `released`: held entries an operator released (observer-id, `HeldAction`);
    `held`: held records by action; `totals`: the store's counters (`dropped:<action>`)."""

    rev: int
    state: bytes | None
    upto: int | None
    watermark: int | None
    waiting: list[bytes]
    more: bool
    released: list[tuple[str, bytes]]
    paused: bool
    held: dict[str, int]
    totals: dict[str, int]


@dataclass(slots=True)
class GuardCommit:
    """What a flow's decider writes, atomically, unless another decider committed since its
    snapshot (`rev`). `outbox`: (shard, observer-id, record) to publish; `held`: (observer-id,
    action, `HeldAction`); `history`: (shard, slot id, entry), appended to histories that
    exist; `decided`, `released`: waiting deviations and released entries done with."""

    rev: int
    state: bytes
    upto: int | None
    decided: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    outbox: list[tuple[int, str, bytes]] = field(default_factory=list)
    held: list[tuple[str, str, bytes]] = field(default_factory=list)
    history: list[tuple[int, str, bytes]] = field(default_factory=list)


class HeldActions(Protocol):
    """The held actions and the pause switch, for operators (`observer actions`, the ops API).
    Thread-safe, off the loop. Every method raises StoreError."""

    def held(self, flow: str) -> list[bytes]:
        """Every `HeldAction` of the flow (encoded), in no particular order."""
        ...

    def release(self, flow: str, ids: Sequence[str], at: int) -> int:
        """Release held actions by observer-id (the flow's decider publishes them, same ids);
        returns how many were still held."""
        ...

    def drop(self, flow: str, ids: Sequence[str], at: int) -> int:
        """Drop held actions by observer-id (recorded in their instances' history); returns
        how many were still held."""
        ...

    def pause(self, flow: str | None, reason: str) -> None: ...

    def resume(self, flow: str | None) -> None:
        """Lift the pause of `flow` (None: every pause)."""
        ...

    def paused(self) -> dict[str, str]:
        """Pauses in force: flow (`*`: every flow) -> reason."""
        ...

    def guard_state(self, flow: str) -> bytes | None:
        """The flow's `GuardState` as its decider stored it."""
        ...
