"""The guardrails' Redis scripts (contract §7) keep the contract of the in-memory store: the
same writes (waiting deviations, gated actions, watermarks), decider reads and commits, and
operators' releases, drops and pauses leave the same snapshots, held sets, outboxes and
histories in both. A commit on a stale snapshot writes nothing; a release takes an action once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from observer.adapters.memory import InMemoryStateStore
from observer.adapters.redis.held import RedisHeldActions
from observer.adapters.redis.keys import Keys
from observer.adapters.redis.query import RedisSlotReader
from observer.adapters.redis.store import RedisStateStore
from observer.engine.effects import DeviationRef
from observer.runtime.held import HeldAction, StoredWaiting, held_history
from observer.runtime.ports import (
    GatedAction,
    GuardCommit,
    GuardSnapshot,
    SlotPut,
    WaitingAdd,
    WriteBatch,
)
from observer.runtime.shards import shard_of, slot_id

SHARDS, CAP = 2, 5
T0 = 1_767_225_600_000


class Pair:
    """The Redis store (and its operators' port) and the in-memory store, driven alike."""

    def __init__(self, stack: Any, prefix: str) -> None:
        self.real = RedisStateStore(stack.redis_url, Keys(prefix, SHARDS), history_cap=CAP)
        self.real.open(SHARDS, {"flows": []})
        self.ops = RedisHeldActions(stack.redis_url, prefix, history_cap=CAP)
        self.reader = RedisSlotReader(stack.redis_url, prefix, shards=SHARDS)
        self.memory = InMemoryStateStore(history_cap=CAP)
        self.memory.open(SHARDS, {"flows": []})

    def write(self, batch: WriteBatch) -> list[str]:
        held = self.real.write(batch).result()
        assert self.memory.write(batch).result() == held
        return held

    def read(self, flow: str, limit: int = 100) -> GuardSnapshot:
        snap = self.real.guard_read(flow, SHARDS, limit)
        mem = self.memory.guard_read(flow, SHARDS, limit)
        assert (snap.rev, snap.upto, snap.watermark, snap.more, snap.paused) == (
            mem.rev,
            mem.upto,
            mem.watermark,
            mem.more,
            mem.paused,
        )
        assert (snap.waiting, sorted(snap.released), snap.held) == (
            mem.waiting,
            sorted(mem.released),
            mem.held,
        )
        return snap

    def same(self, flow: str, keys: list[str]) -> None:
        assert sorted(self.ops.held(flow)) == sorted(self.memory.held(flow))
        assert self.ops.paused() == self.memory.paused()
        for key in keys:
            assert self.reader.read(flow, key)[1] == self.memory.read(flow, key)[1], key

    def close(self) -> None:
        self.reader.close()
        self.ops.close()
        self.real.close()


@pytest.fixture
def pair(stack: Any, unique: str, redis_client: redis.Redis) -> Iterator[Pair]:
    p = Pair(stack, unique)
    yield p
    p.close()


def instance(key: str) -> tuple[int, str, SlotPut]:
    sid = slot_id("shop", key)
    shard = shard_of(sid, SHARDS)
    return shard, sid, SlotPut(shard, sid, b"state", 60_000, None, [b'{"what": "started"}'])


def waiting(key: str, at: int) -> WaitingAdd:
    shard, sid, _ = instance(key)
    ref = DeviationRef("missing", "paid", 1, at, f"dev-{key}")
    w = StoredWaiting("shop", key, ref, shard, sid)
    w.records.append((f"cancel {key}".encode(), "cancel", "action", b'{"what": "published"}'))
    return WaitingAdd("shop", at, ref.id, w.encode())


def held_action(key: str, reason: str) -> tuple[str, str, bytes]:
    shard, sid, _ = instance(key)
    h = HeldAction(
        f"oid-{key}", "shop", key, "cancel", "action", reason, None, "missing", "paid", 1,
        T0, T0, shard, sid, f"cancel {key}".encode(),
    )  # fmt: skip
    return h.observer_id, "cancel", h.encode()


def test_waiting_deviations_are_read_up_to_the_lowest_watermark_and_committed_once(
    pair: Pair,
) -> None:
    keys = [f"k{i}" for i in range(6)]
    batch = WriteBatch(puts=[instance(k)[2] for k in keys])
    batch.waiting = [waiting(k, T0 + 1_000 * i) for i, k in enumerate(keys)]
    batch.watermarks = [(0, T0 + 2_500)]
    pair.write(batch)
    assert pair.read("shop").watermark is None  # a shard stored no watermark yet: nothing
    pair.write(WriteBatch(watermarks=[(1, T0 + 4_000), (0, T0 + 1_000)]))  # 0 is only raised
    snap = pair.read("shop", limit=2)
    assert snap.watermark == T0 + 2_500 and snap.more and len(snap.waiting) == 2
    snap = pair.read("shop")
    assert [StoredWaiting.decode(d).key for d in snap.waiting] == ["k0", "k1", "k2"]
    commit = GuardCommit(snap.rev, b"state-1", T0 + 2_500, decided=["dev-k0", "dev-k1"])
    commit.outbox = [(0, "oid-k0", b"cancel k0")]
    commit.held = [held_action("k1", "incident")]
    shard, sid, _ = instance("k0")
    commit.history = [(shard, sid, b'{"what": "published"}')]
    for store in (pair.real, pair.memory):
        assert store.guard_commit("shop", commit)
        assert not store.guard_commit("shop", commit)  # the snapshot is stale now
    snap = pair.read("shop")
    assert snap.rev == 1 and snap.state == b"state-1" and snap.held == {"cancel": 1}
    assert [StoredWaiting.decode(d).key for d in snap.waiting] == ["k2"]
    assert sorted(pair.real.outbox(range(SHARDS))) == sorted(pair.memory.outbox(range(SHARDS)))
    pair.same("shop", keys)
    _shard, sid, _ = instance("k5")
    pair.write(WriteBatch(floors=[("shop", sid, T0 + 2_000)]))  # k5 waits for an alias answer
    assert pair.read("shop").watermark == T0 + 1_999  # decided only below its timer
    pair.write(WriteBatch(floors=[("shop", sid, None)]))
    assert pair.read("shop").watermark == T0 + 2_500


def test_pauses_hold_gated_actions_and_operators_release_or_drop_them_once(pair: Pair) -> None:
    keys = ["p1", "p2", "p3"]
    pair.write(WriteBatch(puts=[instance(k)[2] for k in keys]))
    pair.real.pause("shop", "maintenance")
    pair.memory.pause("shop", "maintenance")

    def gated(key: str) -> GatedAction:
        shard, sid, _ = instance(key)
        oid, _action, entry = held_action(key, "paused")
        history = held_history("held", T0, oid, "cancel", "paused", None)
        return GatedAction(
            "shop", "cancel", shard, sid, oid, f"cancel {key}".encode(), entry,
            b'{"what": "published"}', history,
        )  # fmt: skip

    held = pair.write(WriteBatch(gated=[gated("p1"), gated("p2")]))
    assert held == ["oid-p1", "oid-p2"]
    assert pair.read("shop").paused
    pair.same("shop", keys)
    for port in (pair.ops, pair.memory):
        assert port.release("shop", ["oid-p1", "oid-nothing"], T0 + 5) == 1
        assert port.release("shop", ["oid-p1"], T0 + 6) == 0  # taken once
        assert port.drop("shop", ["oid-p2"], T0 + 7) == 1
        port.resume(None)
    snap = pair.read("shop")
    assert [oid for oid, _ in snap.released] == ["oid-p1"] and snap.held == {}
    assert not snap.paused
    assert pair.write(WriteBatch(gated=[gated("p3")])) == []  # resumed: into the outbox
    pair.same("shop", keys)
    assert b'"dropped"' in pair.reader.read("shop", "p2")[1][-1]
    assert sorted(pair.real.outbox(range(SHARDS))) == sorted(pair.memory.outbox(range(SHARDS)))
