"""`GuardDecider`: the one decider of each guarded flow in the group (contract §7).

Deviations of a flow whose guardrails wait for them are stored, with the state that raised
them, among the flow's waiting deviations; every shard's owner stores the watermark up to
which its timers all fired. A flow's decider is the process that owns the flow's guard shard
(`guard_shard`: a stable hash of its name, one of the keyed topic's partitions, so the group's
assignment gives every flow exactly one decider, and a dead one's successor takes over). Every
`guard_interval_ms` it reads, in one request, the flow's state and what waits up to the lowest
stored watermark, decides with `GuardState.decide` (the pure code replay uses), and writes the
result in one atomic request that fails if another decider wrote meanwhile (two processes may
both believe they own the shard for a moment during a rebalance). Records to publish are put
in the guard shard's outbox by that write and then published by the decider, like a batch's:
a decider that dies before they are acknowledged leaves them to the next owner of the shard.

Held actions stay in the store until an operator releases them (`released`: the decider
publishes them from the guard shard's outbox, same observer-ids) or drops them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from observer.config import ObserverConfig
from observer.flows.registry import FlowRegistry
from observer.guardrails.gate import GuardState, IncidentNote, Verdict, Waiting
from observer.metrics import Metrics
from observer.runtime.every import Every
from observer.runtime.held import HeldAction, StoredWaiting, held_history
from observer.runtime.outbox import OutboxRecord, decode_record, encode_record, to_record
from observer.runtime.ports import Clock, GuardCommit, GuardSnapshot, StateStore
from observer.runtime.publisher import Publisher
from observer.runtime.shards import shard_of

__all__ = ["GuardDecider", "guard_shard"]

log = logging.getLogger(__name__)

Ref = tuple[StoredWaiting, int]  # a waiting record: its deviation and its index there


def guard_shard(flow: str, shards: int) -> int:
    """The shard whose owner decides the flow's guardrails."""
    return shard_of(f"guardrails:{flow}", shards)


class GuardDecider:
    """Runs the decider of every flow whose guard shard this process owns."""

    def __init__(
        self,
        registry: FlowRegistry,
        store: StateStore,
        publisher: Publisher,
        metrics: Metrics,
        clock: Clock,
        config: ObserverConfig,
        alerts_topic: str,
    ) -> None:
        self.registry = registry
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.clock = clock
        self.shards = config.shards
        self.limit = config.guard_batch  # waiting deviations read per pass at most
        self.alerts_topic = alerts_topic
        self._every = Every(config.guard_interval_ms / 1000.0, clock.monotonic)
        self._deciding: set[str] = set()  # flows decided here (their gauges are exported here)
        self._dropped_seen: dict[str, dict[str, int]] = {}

    def turn(self, owned: Collection[int]) -> None:
        """A pass every guard interval (at once again while more waits). Raises StoreError."""
        if self._every.due() and self.run(owned):
            self._every.hurry()

    def run(self, owned: Collection[int]) -> bool:
        """One pass for each flow this process decides; True if any has more waiting.
        Raises StoreError."""
        mine = {f for f in self.registry.names() if guard_shard(f, self.shards) in owned}
        for gone in self._deciding - mine:
            self.metrics.forget_guard(gone)
            self._dropped_seen.pop(gone, None)
        self._deciding = mine
        more = False
        for flow in sorted(mine):
            more |= self.decide(flow)
        return more

    def decide(self, flow: str) -> bool:
        """Decide what waits for `flow`, publish released actions; True if more waits."""
        snap = self.store.guard_read(flow, self.shards, self.limit)
        state = GuardState.from_bytes(snap.state)
        upto = snap.upto
        if snap.watermark is not None:
            upto = snap.watermark if upto is None else max(upto, snap.watermark)
        commit = GuardCommit(snap.rev, b"", snap.upto)
        out: list[OutboxRecord] = []
        now = self.clock.now_ms()
        gs = guard_shard(flow, self.shards)
        held: list[tuple[str, str]] = []  # (action, reason) of what this pass holds
        opened: list[str] = []  # incidents this pass opened
        if upto is not None and (snap.waiting or state.open):
            waiting = self._waiting(snap, commit)
            rails = self.registry.newest(flow).guardrails
            decided = state.decide(
                flow,
                rails,
                waiting,
                upto,
                alerts_topic=self.alerts_topic,
                paused=snap.paused,
                complete=not snap.more,
            )
            for d in decided:
                if isinstance(d, IncidentNote) and d.kind == "incident":
                    opened.append(d.incident)
                    log.warning("%s: %s", flow, d.record.value.get("summary"))
                self._apply(d, commit, out, held, gs, now)
            commit.upto = state.upto
        released = []
        for oid, data in snap.released:
            try:
                h = HeldAction.decode(data)
            except ValueError as exc:
                log.error(
                    "released action %s of %s cannot be decoded (%s); dropped", oid, flow, exc
                )
                commit.released.append(oid)
                continue
            commit.outbox.append((gs, oid, h.record))
            out.append(decode_record(h.record))
            commit.released.append(oid)
            released.append(h.action)
        if commit.decided or commit.released or commit.upto != snap.upto:
            commit.state = state.to_bytes()
            if not self.store.guard_commit(flow, commit):
                log.info("guardrails of %s: another decider wrote meanwhile; deciding again", flow)
                return True
            self.publisher.publish([(gs, r) for r in out])
        self._count(flow, state, snap, commit, held, released, len(opened))
        return snap.more

    def _waiting(self, snap: GuardSnapshot, commit: GuardCommit) -> list[Waiting[Ref]]:
        out: list[Waiting[Ref]] = []
        for data in snap.waiting:
            try:
                w = StoredWaiting.decode(data)
            except ValueError as exc:
                log.error("a waiting deviation cannot be decoded (%s); dropped", exc)
                continue
            commit.decided.append(w.ref.id)
            records = [((w, i), action) for i, (_r, action, _c, _h) in enumerate(w.records)]
            out.append(Waiting(w.flow, w.key, w.ref, records))
        return out

    def _apply(
        self,
        d: Verdict[Ref] | IncidentNote,
        commit: GuardCommit,
        out: list[OutboxRecord],
        held: list[tuple[str, str]],
        gs: int,
        now: int,
    ) -> None:
        """What one decision writes: a record to publish, a held action, history entries."""
        if isinstance(d, IncidentNote):
            rec = to_record(d.record, now, 0)
            commit.outbox.append((gs, rec.observer_id, encode_record(rec)))
            out.append(rec)
            return
        w, i = d.record
        record, action, category, published = w.records[i]
        oid = decode_record(record).observer_id
        if d.outcome == "publish":
            commit.outbox.append((gs, oid, record))
            out.append(decode_record(record))
            commit.history.append((w.shard, w.sid, published))
        elif d.outcome == "hold" and action is not None:
            ref = w.ref
            reason = d.reason or "held"
            h = HeldAction(
                oid, w.flow, w.key, action, category, reason, d.incident, ref.kind, ref.step,
                ref.version, ref.at, now, w.shard, w.sid, record,
            )  # fmt: skip
            commit.held.append((oid, action, h.encode()))
            commit.history.append((w.shard, w.sid, h.history("held", now)))
            held.append((action, reason))
        else:  # an alert an incident suppresses
            entry = held_history("suppressed", now, oid, None, None, d.incident)
            commit.history.append((w.shard, w.sid, entry))

    def _count(
        self,
        flow: str,
        state: GuardState,
        snap: GuardSnapshot,
        commit: GuardCommit,
        held: list[tuple[str, str]],
        released: list[str],
        opened: int,
    ) -> None:
        """The flow's guardrail metrics, as this (its deciding) process sees them."""
        counts = dict(snap.held)
        for _oid, action, _e in commit.held:
            counts[action] = counts.get(action, 0) + 1
        dropped = {k[8:]: v for k, v in snap.totals.items() if k.startswith("dropped:")}
        seen = self._dropped_seen.setdefault(flow, dict(dropped))
        new_drops = {a: n - seen.get(a, 0) for a, n in dropped.items() if n > seen.get(a, 0)}
        seen.update(dropped)
        self.metrics.record_guard(
            flow,
            open_incidents=len(state.open),
            held=counts,
            opened=opened,
            newly_held=held,
            released=released,
            dropped=new_drops,
        )
