"""`GuardIntake`: what a batch hands to the guardrails (contract §7) instead of its outbox.

A record of a deviation its flow's guardrails wait for (`CompiledGuardrails.deferred`) goes to
the flow's waiting deviations in the same atomic write as the state that raised it; the flow's
decider (`guards.py`) decides it once every shard's watermark passed its time. An action record
of any other deviation is `gated`: the write holds it if its flow is paused, else puts it in
the outbox, and it is published after the write like the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from observer.engine import timers
from observer.engine.aliases import pending
from observer.engine.core import Engine
from observer.engine.effects import Publish
from observer.engine.state import KeySlot
from observer.flows.aliases import split_alias_flow
from observer.flows.compiled import CompiledGuardrails
from observer.runtime.held import HeldAction, StoredWaiting, held_history
from observer.runtime.outbox import OutboxRecord, encode_record
from observer.runtime.ports import GatedAction, WaitingAdd, WriteBatch
from observer.runtime.shards import split_slot_id

__all__ = ["GuardIntake"]

E = TypeVar("E")


class GuardIntake:
    """The guarded records of one batch. `rails_of(flow)`: the guardrails in force."""

    def __init__(self, rails_of: Callable[[str], CompiledGuardrails], now: int) -> None:
        self.rails_of = rails_of
        self.now = now
        self.waiting: dict[str, StoredWaiting] = {}
        self.gated: list[GatedAction] = []
        self.gated_ids: set[str] = set()
        self._rails: dict[str, CompiledGuardrails] = {}
        self.engine: Engine | None = None
        self.floored: set[str] = set()  # guarded flows with aliases: their slots have floors

    @classmethod
    def of(cls, engine: Engine, now: int) -> GuardIntake:
        """The intake of a batch of `engine` (the newest version's guardrails are in force)."""
        intake = cls(lambda flow: engine.registry.newest(flow).guardrails, now)
        intake.engine = engine
        intake.floored = {
            f.name for f in engine.registry.newest_flows() if f.guardrails.active and f.aliases
        }
        return intake

    def waits(self, flow: str, p: Publish) -> bool:
        """Whether the record's deviation waits for the flow's decider (`flow`: the slot's; an
        alias slot's records count for their flow)."""
        flow = split_alias_flow(flow)[0]
        rails = self._rails.get(flow)
        if rails is None:
            rails = self._rails[flow] = self.rails_of(flow)
        assert p.deviation is not None
        return rails.deferred(p.deviation.kind)

    def take(
        self, flow: str, key: str, shard: int, sid: str, p: Publish, rec: OutboxRecord, hist: bytes
    ) -> bool:
        """Take a deviation's record (with its history entry): it waits for the decider, or it
        is gated (True: the caller publishes it after the write unless the write held it)."""
        flow = split_alias_flow(flow)[0]
        if self.waits(flow, p):
            self.wait(flow, key, shard, sid, p, rec, hist)
            return False
        self.gate(flow, key, shard, sid, p, rec, hist)
        return True

    def not_taken(self, effects: list[E]) -> list[E]:
        """The effects but the records this intake took (their history entries are written
        with what becomes of them)."""
        return [e for e in effects if not (isinstance(e, Publish) and self._took(e))]

    def _took(self, p: Publish) -> bool:
        ref = p.deviation
        return p.observer_id in self.gated_ids or (ref is not None and ref.id in self.waiting)

    def wait(
        self, flow: str, key: str, shard: int, sid: str, p: Publish, rec: OutboxRecord, hist: bytes
    ) -> None:
        """Add a record to its deviation's waiting entry."""
        ref = p.deviation
        assert ref is not None
        w = self.waiting.get(ref.id)
        if w is None:
            w = self.waiting[ref.id] = StoredWaiting(flow, key, ref, shard, sid)
        w.records.append((encode_record(rec), p.action, p.category, hist))

    def gate(
        self, flow: str, key: str, shard: int, sid: str, p: Publish, rec: OutboxRecord, hist: bytes
    ) -> None:
        """An action record published unless its flow is paused."""
        ref = p.deviation
        assert ref is not None and p.action is not None
        record = encode_record(rec)
        held = HeldAction(
            p.observer_id,
            flow,
            key,
            p.action,
            p.category,
            "paused",
            None,
            ref.kind,
            ref.step,
            ref.version,
            ref.at,
            self.now,
            shard,
            sid,
            record,
        )
        entry = held_history("held", self.now, p.observer_id, p.action, "paused", None)
        self.gated.append(
            GatedAction(
                flow, p.action, shard, sid, p.observer_id, record, held.encode(), hist, entry
            )
        )
        self.gated_ids.add(p.observer_id)

    def plan(
        self,
        batch: WriteBatch,
        records: list[tuple[int, OutboxRecord]],
        slots: Sequence[tuple[str, KeySlot | None, bytes | None]],
        watermarks: Mapping[int, int],
    ) -> None:
        """Fill the batch's outbox (but the gated records: the write puts those in the outbox,
        or holds them) and its guardrails' part. `slots`: (slot id, slot) of the batch;
        `watermarks`: its shards' as it was applied."""
        gated = self.gated_ids
        for shard, rec in records:
            if rec.observer_id not in gated:
                batch.outbox_adds.append((shard, rec.observer_id, encode_record(rec)))
        batch.waiting = self.waiting_adds()
        batch.gated = self.gated
        if self.floored:
            batch.floors = self._floors(batch, slots, watermarks)

    def _floors(
        self,
        batch: WriteBatch,
        slots: Sequence[tuple[str, KeySlot | None, bytes | None]],
        watermarks: Mapping[int, int],
    ) -> list[tuple[str, str, int | None]]:
        """An instance that waits for an alias answer fires no timer, however far its shard's
        watermark went: until it fired them, its earliest timer is a floor under the watermark
        its flow's decider decides by (else a deviation could come after the decider passed
        its time, and be decided out of order)."""
        assert self.engine is not None
        by_sid = {sid: slot for sid, slot, _state in slots}
        out: list[tuple[str, str, int | None]] = []
        for put in batch.puts:
            slot = by_sid.get(put.sid)
            if slot is None or slot.flow not in self.floored:  # (an alias value's slot: not)
                continue
            floor = None
            inst = slot.instance
            if inst is not None and inst.open and inst.aliases:
                due = timers.next_due(self.engine.flow_of(slot), slot, False)
                wm = watermarks.get(put.shard, self.now)
                if due is not None and (pending(inst) or due <= wm):
                    floor = due
            out.append((slot.flow, put.sid, floor))
        for _shard, sid in batch.deletes:  # a slot that goes takes its floor with it
            flow = split_slot_id(sid)[0]
            if flow in self.floored:
                out.append((flow, sid, None))
        return out

    def waiting_adds(self) -> list[WaitingAdd]:
        return [WaitingAdd(w.flow, w.ref.at, w.ref.id, w.encode()) for w in self.waiting.values()]
