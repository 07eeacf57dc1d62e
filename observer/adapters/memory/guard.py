"""The guardrails' part of `InMemoryStateStore` (contract §7): what `write.lua`'s guardrail
block, `guard_read.lua`, `guard_commit.lua` and `held.lua` do in Redis, in dicts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from observer.runtime.held import HeldAction
from observer.runtime.ports import GuardCommit, GuardSnapshot, WriteBatch

__all__ = ["GuardData"]

Append = Callable[[str, bytes], None]  # slot id, history entry (if the history exists)
OutboxPut = Callable[[int, str, bytes], None]


@dataclass(slots=True)
class FlowGuard:
    """One flow's guardrail keys."""

    rev: int = 0
    upto: int | None = None
    blob: bytes | None = None
    waiting: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # id -> (at, data)
    held: dict[str, bytes] = field(default_factory=dict)
    heldn: dict[str, int] = field(default_factory=dict)
    released: dict[str, bytes] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    floor: dict[str, int] = field(default_factory=dict)  # slot id -> due (alias answers)

    def copy(self) -> FlowGuard:
        return FlowGuard(
            self.rev,
            self.upto,
            self.blob,
            dict(self.waiting),
            dict(self.held),
            dict(self.heldn),
            dict(self.released),
            dict(self.totals),
            dict(self.floor),
        )


@dataclass(slots=True)
class GuardData:
    """Every flow's guardrail keys, the shards' watermarks and the pauses."""

    flows: dict[str, FlowGuard] = field(default_factory=dict)
    watermarks: dict[int, int] = field(default_factory=dict)
    paused: dict[str, str] = field(default_factory=dict)

    def copy(self) -> GuardData:
        return GuardData(
            {f: g.copy() for f, g in self.flows.items()}, dict(self.watermarks), dict(self.paused)
        )

    def flow(self, name: str) -> FlowGuard:
        g = self.flows.get(name)
        if g is None:
            g = self.flows[name] = FlowGuard()
        return g

    def is_paused(self, flow: str) -> bool:
        return "*" in self.paused or flow in self.paused

    def resume(self, flow: str | None) -> None:
        if flow is None:
            self.paused.clear()
        else:
            self.paused.pop(flow, None)

    def write(self, batch: WriteBatch, append: Append, outbox: OutboxPut) -> list[str]:
        """The guardrails' part of a write batch; returns the gated records held."""
        for shard, wm in batch.watermarks:
            if wm > self.watermarks.get(shard, -(2**63)):
                self.watermarks[shard] = wm
        for w in batch.waiting:
            self.flow(w.flow).waiting[w.id] = (w.at, w.data)
        held = []
        for g in batch.gated:
            if self.is_paused(g.flow):
                fg = self.flow(g.flow)
                fg.held[g.observer_id] = g.held
                fg.heldn[g.action] = fg.heldn.get(g.action, 0) + 1
                held.append(g.observer_id)
                append(g.sid, g.held_history)
            else:
                outbox(g.shard, g.observer_id, g.record)
                append(g.sid, g.published)
        for flow, sid, due in batch.floors:
            if due is None:
                self.flow(flow).floor.pop(sid, None)
            else:
                self.flow(flow).floor[sid] = due
        return held

    def read(self, flow: str, shards: int, limit: int) -> GuardSnapshot:
        g = self.flow(flow)
        marks = [wm for s, wm in self.watermarks.items() if 0 <= s < shards]
        low = min(marks) if len(marks) >= shards else None
        if low is not None and g.floor:
            low = min(low, min(g.floor.values()) - 1)
        hi = low if g.upto is None else (g.upto if low is None else max(low, g.upto))
        ready = (
            [] if hi is None else sorted((at, i) for i, (at, _d) in g.waiting.items() if at <= hi)
        )
        return GuardSnapshot(
            rev=g.rev,
            state=g.blob,
            upto=g.upto,
            watermark=low,
            waiting=[g.waiting[i][1] for _at, i in ready[:limit]],
            more=len(ready) > limit,
            released=list(g.released.items()),
            paused=self.is_paused(flow),
            held=dict(g.heldn),
            totals=dict(g.totals),
        )

    def commit(self, flow: str, c: GuardCommit, append: Append, outbox: OutboxPut) -> bool:
        g = self.flow(flow)
        if g.rev != c.rev:
            return False
        g.rev += 1
        g.blob, g.upto = c.state, c.upto
        for i in c.decided:
            g.waiting.pop(i, None)
        for oid in c.released:
            g.released.pop(oid, None)
        for shard, oid, rec in c.outbox:
            outbox(shard, oid, rec)
        for oid, action, entry in c.held:
            g.held[oid] = entry
            g.heldn[action] = g.heldn.get(action, 0) + 1
        for _shard, sid, entry in c.history:
            append(sid, entry)
        return True

    def take_held(self, flow: str, ids: Sequence[str], at: int, mode: str, append: Append) -> int:
        """Release (to `released`, for the decider) or drop held entries."""
        g = self.flow(flow)
        done = 0
        for oid in ids:
            data = g.held.pop(oid, None)
            if data is None:
                continue
            h = HeldAction.decode(data)
            n = g.heldn.get(h.action, 0) - 1
            if n > 0:
                g.heldn[h.action] = n
            else:
                g.heldn.pop(h.action, None)
            if mode == "release":
                g.released[oid] = data
            else:
                name = f"dropped:{h.action}"
                g.totals[name] = g.totals.get(name, 0) + 1
            append(h.sid, h.history("released" if mode == "release" else "dropped", at))
            done += 1
        return done
