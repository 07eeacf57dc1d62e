"""The ticker's due bounds (issue 18): a tick reads only the shards whose watermark reached
the earliest due time their index can hold, and every timer still fires when it is due."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from observer.adapters.memory import ManualClock
from observer.engine.core import Engine
from observer.runtime.due_bounds import RELEARN_S, DueBounds
from observer.runtime.ports import DueSlots, SlotPut
from tests.unit import test_runtime_loop
from tests.unit.test_runtime_loop import SHARDS, Observer, observer, shard

obs = test_runtime_loop.obs  # the same fixture: an observer on the in-memory world, closed after


def test_bounds_are_learnt_lowered_forgotten_and_learnt_again() -> None:
    clock = ManualClock()
    b = DueBounds(clock.monotonic)
    marks = [(0, 100), (1, 100), (2, 100)]
    assert b.to_read(marks) == marks  # nothing known: read everything
    b.learn({0: 150, 1: None})  # shard 2: its due slots were not all read
    assert b.to_read(marks) == [(2, 100)]
    assert b.to_read([(0, 150), (1, 10**15)]) == [(0, 150)]  # a bound is a due time: reached
    b.lower([SlotPut(1, "shop:a", b"", 1, 120), SlotPut(0, "shop:b", b"", 1, None)])
    b.lower([SlotPut(0, "shop:c", b"", 1, 170), SlotPut(2, "shop:d", b"", 1, 1)])
    assert (b.bound(0), b.bound(1), b.bound(2)) == (150, 120, None)
    assert b.to_read(marks) == [(2, 100)]
    assert b.to_read([(1, 120)]) == [(1, 120)]
    b.forget([1])
    assert b.bound(1) is None and b.bound(0) == 150
    clock.advance(RELEARN_S + 0.1)  # every bound is learnt again now and then
    assert b.to_read(marks) == marks
    b.learn({0: 150})
    assert b.to_read([(0, 100)]) == []
    b.forget()
    assert b.bound(0) is None


class _Reads:
    """Every `due` request of the store: the (shard, watermark) pairs asked."""

    def __init__(self, o: Observer) -> None:
        self.asked: list[list[tuple[int, int]]] = []
        real = o.store.due

        def due(marks: Sequence[tuple[int, int]], limit: int) -> DueSlots:
            self.asked.append(list(marks))
            return real(marks, limit)

        o.store.due = due  # type: ignore[method-assign]

    def shards(self) -> set[int]:
        return {s for marks in self.asked for s, _wm in marks}


def test_ticks_with_nothing_due_read_nothing_and_the_timer_still_fires(
    obs: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("observer.runtime.due_bounds.RELEARN_S", 60.0)  # (not in this test)
    reads = _Reads(obs)
    obs.turn(10)
    assert reads.shards() == set(range(SHARDS))  # learnt once: nothing is due anywhere
    bounds = obs.runtime.tracker.bounds
    assert all(bounds.bound(s) is not None for s in range(SHARDS))
    reads.asked.clear()
    obs.turn(10)
    assert reads.asked == []  # the watermarks moved, nothing could be due
    obs.send("orders", "Placed", "o-1")  # the batch's write lowers the bound to its deadline
    obs.turn(4)
    due = obs.store.due_time("shop", "o-1")
    assert due is not None and bounds.bound(shard("o-1")) == due
    obs.turn(20)  # 1 s: the deadline is 10 s away
    assert reads.asked == [] and obs.alerts() == []
    obs.turn(1, seconds=9.0)
    obs.turn(3)
    (alert,) = obs.alerts("missing")
    assert alert["key"] == "o-1"
    assert reads.shards() == {shard("o-1")}  # only the shard whose watermark reached it
    after = obs.store.due_time("shop", "o-1")  # (the instance's next timer: its expiry)
    assert after is not None and after > obs.clock.now_ms()
    assert bounds.bound(shard("o-1")) == after  # lowered by the tick's own write


def test_a_shard_assigned_again_is_read_again(obs: Observer) -> None:
    """Another process may have written its due index while it was away."""
    keyed = obs.world.config.keyed_topic_name()
    source = obs.world.keyed_source
    assert source is not None
    bounds = obs.runtime.tracker.bounds
    obs.turn(10)
    assert bounds.bound(1) is not None
    source.revoke([(keyed, 1)])
    obs.turn(2)
    assert bounds.bound(1) is None
    reads = _Reads(obs)
    obs.turn(5)
    assert 1 not in reads.shards()
    source.assign([(keyed, 1)])
    obs.turn(5)
    assert 1 in reads.shards() and bounds.bound(1) is not None


def test_a_store_failure_forgets_every_bound(obs: Observer) -> None:
    """A write the store lost may have moved a due time later than the bound assumed."""
    obs.send("orders", "Placed", "o-1")
    obs.turn(6)
    bounds = obs.runtime.tracker.bounds
    assert all(bounds.bound(s) is not None for s in range(SHARDS))
    obs.store.crash(down_for=2)  # o-1's write is lost; it is read again from the offsets
    reads = _Reads(obs)
    obs.turn(1)
    assert all(bounds.bound(s) is None for s in range(SHARDS))
    for _ in range(100):  # the loop goes on; the store is tried again after its backoff
        obs.turn(1)
        if obs.runtime.health.redis_ok:
            break
    obs.turn(6)
    assert reads.shards() == set(range(SHARDS))
    assert obs.store.due_time("shop", "o-1") is not None
    obs.turn(1, seconds=11.0)
    obs.turn(3)
    assert [a["key"] for a in obs.alerts("missing")] == ["o-1"]


class _FailingTimers(Engine):
    """An engine whose timers fail (a subclass: the engine may be compiled, see `Engine`)."""

    def fire(self, slot: Any, watermark: int, now: int | None = None) -> Any:
        raise RuntimeError("boom")


def test_a_timer_written_by_a_tick_lowers_the_bound(tmp_path: Path) -> None:
    """A timer that failed is deferred by the tick's own write; the bound follows it."""
    o = observer(tmp_path)
    o.send("orders", "Placed", "o-1")
    o.turn(4)
    tracker = o.runtime.tracker
    engine = tracker.planning.engine
    tracker.planning.engine = _FailingTimers(engine.registry, engine.topics)
    o.turn(1, seconds=11.0)
    o.turn(3)
    due = o.store.due_time("shop", "o-1")
    assert o.alerts() == [] and due is not None and due > o.clock.now_ms()
    assert tracker.bounds.bound(shard("o-1")) == due  # deferred a minute: bound there
    tracker.planning.engine = engine
    o.turn(1, seconds=61.0)
    o.turn(3)
    assert [a["key"] for a in o.alerts("missing")] == ["o-1"]
    o.runtime.stop()
    o.runtime.close()


def test_watermarks_are_stored_while_every_turn_has_a_batch(obs: Observer) -> None:
    """Under load a batch's write is always in flight when the tick runs: the guardrails'
    watermarks are then stored between a batch's settle and its own write."""
    obs.turn(4)
    stored = obs.store._data.guard.watermarks
    assert sorted(stored) == list(range(SHARDS))
    before = dict(stored)
    for i in range(40):  # events in every turn: a write in flight at every tick
        obs.send("orders", "Placed", f"o-{i}")
        obs.turn(1)
        assert obs.runtime.tracker.writes.in_flight
    assert all(stored[s] > before[s] for s in range(SHARDS))
    assert obs.runtime.tracker.bounds.bound(shard("o-1")) is not None
