"""`GuardIntake`: what a batch hands to the guardrails (contract §7) instead of its outbox.

A record of a deviation its flow's guardrails wait for (`CompiledGuardrails.deferred`) goes to
the flow's waiting deviations in the same atomic write as the state that raised it; the flow's
decider (`guards.py`) decides it once every shard's watermark passed its time. An action record
of any other deviation is `gated`: the write holds it if its flow is paused, else puts it in
the outbox, and it is published after the write like the others.
"""

from __future__ import annotations

from collections.abc import Callable

from observer.engine.effects import Publish
from observer.flows.compiled import CompiledGuardrails
from observer.runtime.held import HeldAction, StoredWaiting, held_history
from observer.runtime.outbox import OutboxRecord, encode_record
from observer.runtime.ports import GatedAction, WaitingAdd

__all__ = ["GuardIntake"]

History = Callable[[Publish], bytes]


class GuardIntake:
    """The guarded records of one batch. `rails_of(flow)`: the guardrails in force."""

    def __init__(self, rails_of: Callable[[str], CompiledGuardrails], now: int) -> None:
        self.rails_of = rails_of
        self.now = now
        self.waiting: dict[str, StoredWaiting] = {}
        self.gated: list[GatedAction] = []
        self.gated_ids: set[str] = set()
        self._rails: dict[str, CompiledGuardrails] = {}

    def waits(self, flow: str, p: Publish) -> bool:
        """Whether the record's deviation waits for the flow's decider."""
        rails = self._rails.get(flow)
        if rails is None:
            rails = self._rails[flow] = self.rails_of(flow)
        assert p.deviation is not None
        return rails.deferred(p.deviation.kind)

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

    def waiting_adds(self) -> list[WaitingAdd]:
        return [WaitingAdd(w.flow, w.ref.at, w.ref.id, w.encode()) for w in self.waiting.values()]
