"""Aliases through the runtime on in-memory adapters, with a manual clock: events via an alias
value reach their instance through a second hop of the keyed topic (both routings); hop marks
keep a deadline from firing while such an event is still on its way from another process; the
messages survive a process that dies before publishing them. (Against Kafka and Redis:
tests/integration/test_runtime_aliases.py, tests/e2e/test_aliases.py and the chaos test.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from observer.adapters.memory import InMemoryBroker, InMemoryStateStore, InMemoryWorld
from observer.adapters.memory.clock import ManualClock
from observer.config import ObserverConfig
from observer.engine.codec import decode_slot
from observer.flows.aliases import alias_flow
from observer.flows.compiler import load_registry
from observer.metrics import Metrics
from observer.runtime.health import Health
from observer.runtime.loop import Runtime
from observer.runtime.shards import shard_of, slot_id

FLOW = """
flow: delivery
version: 1
sources:
  shipping: {topic: shipping, type: value.type, key: value.id, id: value.eid, time: value.at}
  carrier: {topic: carrier, type: value.type, key: value.tn, id: value.eid, time: value.at, via: tracking}
aliases:
  tracking: {from: shipping.Booked, value: value.tn}
steps:
  - step: ready
    on: shipping.Ready
  - step: booked
    on: shipping.Booked
    within: 10s
  - step: picked_up
    on: carrier.PickedUp
    within: 10s
    if_missing: [chase]
buffer: 1m
retain: 1h
actions:
  chase:
    publish: {topic: cmds, key: "{{ aliases.tracking }}", value: {type: Chase, tn: "{{ aliases.tracking }}"}}
"""
SHARDS = 4
TURN_S = 0.05
T0 = 1_767_225_600_000


@dataclass
class Process:
    world: InMemoryWorld
    runtime: Runtime

    def turn(self, n: int = 1) -> None:
        for _ in range(n):
            self.runtime.cycle()

    def close(self) -> None:
        self.runtime.stop()
        self.runtime.close()


class Group:
    """Observer processes sharing a broker, a store and a clock, turned by hand."""

    def __init__(self, tmp_path: Path, **over: Any) -> None:
        self.flow = tmp_path / "delivery.yaml"
        self.flow.write_text(FLOW)
        self.config = ObserverConfig(
            group_id="g",
            shards=SHARDS,
            idle_grace_ms=0,
            commit_interval_ms=0,
            commit_delay_ms=500,
            tick_interval_ms=20,
            mark_interval_ms=20,
            batch_size=100,
            **over,
        )
        self.clock = ManualClock(T0)
        self.broker = InMemoryBroker()
        self.store = InMemoryStateStore()
        self.broker.create("shipping", 2)
        self.broker.create("carrier", 2)
        self.processes: list[Process] = []

    def start(self, *, routes: bool = True, keyed: list[int] | None = None) -> Process:
        """A process; `routes`: its router reads the source topics; `keyed`: the shards it
        owns (default: all)."""
        world = InMemoryWorld(self.config, clock=self.clock, broker=self.broker, store=self.store)
        world.router_source.auto_assign = routes
        if keyed is not None and world.keyed_source is not None:
            world.keyed_source.auto_assign = False
            topic = self.config.keyed_topic_name()
            world.keyed_source.assign([(topic, s) for s in keyed])
        runtime = Runtime(
            self.config,
            load_registry([self.flow]),
            world.ports(),
            metrics=Metrics(CollectorRegistry()),
            health=Health(self.clock.monotonic),
        )
        assert runtime.open()
        p = Process(world, runtime)
        self.processes.append(p)
        return p

    def turn(self, n: int = 1, seconds: float = TURN_S, only: Process | None = None) -> None:
        for _ in range(n):
            for p in self.processes if only is None else [only]:
                p.turn()
            self.clock.advance(seconds)

    def send(self, topic: str, etype: str, key: str, at_s: float, **extra: Any) -> None:
        value = {"type": etype, "eid": f"{etype}-{key}", "at": T0 + round(at_s * 1000), **extra}
        if topic == "carrier":
            value["tn"] = key
        else:
            value["id"] = key
        self.broker.append(topic, None, key.encode(), orjson.dumps(value), (), self.clock.now_ms())

    def out(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.broker.records(topic)]

    def alerts(self, kind: str) -> list[dict[str, Any]]:
        return [a for a in self.out("observer.alerts") if a["kind"] == kind]

    def close(self) -> None:
        for p in self.processes:
            p.close()


def shard(name: str, key: str) -> int:
    return shard_of(slot_id(name, key), SHARDS)


def keys_on_different_shards() -> tuple[str, str]:
    """An order key and a tracking number whose slots live in different shards."""
    tn = "T-1"
    alias_shard = shard(alias_flow("delivery", "tracking"), tn)
    key = next(f"o-{i}" for i in range(100) if shard("delivery", f"o-{i}") != alias_shard)
    return key, tn


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    g = Group(tmp_path)
    yield g
    g.close()


@pytest.mark.parametrize("routing", ["keyed", "direct"])
def test_events_via_an_alias_reach_their_instance_before_and_after_registration(
    tmp_path: Path, routing: str
) -> None:
    g = Group(tmp_path, routing=routing)
    g.start()
    key, tn = keys_on_different_shards()
    g.send("carrier", "PickedUp", tn, 3)  # read before the booking that registers it
    g.turn(3)
    g.send("shipping", "Ready", key, 0)
    g.send("shipping", "Booked", key, 1, tn=tn)
    g.turn(6)
    (outcome,) = g.out("observer.outcomes")
    assert outcome["outcome"] == "completed" and outcome["aliases"] == {"tracking": tn}
    assert outcome["steps"]["picked_up"] == "2026-01-01T00:00:03Z"
    g.send("carrier", "PickedUp", "T-9", 5)  # nobody holds T-9: orphaned after `buffer`
    g.turn(4)
    assert g.out("observer.alerts") == []
    g.turn(8, seconds=10)  # a minute later (in steps: the lease of direct routing is renewed)
    g.turn(4)
    (orphan,) = g.alerts("orphaned")
    assert (orphan["key"], orphan["alias"], orphan["step"]) == ("T-9", "tracking", "picked_up")
    g.turn(20, seconds=0.1)  # direct routing: hops are acknowledged by the tracker's commits
    assert g.store.outbox_entries() == {}
    g.close()


def test_hop_marks_hold_a_deadline_while_an_event_via_an_alias_is_on_its_way(
    group: Group,
) -> None:
    key, tn = keys_on_different_shards()
    alias_shard = shard(alias_flow("delivery", "tracking"), tn)
    others = [s for s in range(SHARDS) if s != alias_shard]
    main = group.start(keyed=others)  # routes, and owns the instance's shard
    group.start(routes=False, keyed=[alias_shard])  # owns the alias value's shard
    group.send("shipping", "Ready", key, 0)
    group.send("shipping", "Booked", key, 1, tn=tn)
    group.turn(6)  # registered: the instance holds the value
    state = group.store.read(alias_flow("delivery", "tracking"), tn)[0]
    assert state is not None and decode_slot("x/tracking", tn, state).hold is not None
    group.send("carrier", "PickedUp", tn, 5)  # on time (deadline: 11s)
    group.turn(2, only=main)  # routed to the alias value's shard, whose process is stalled
    group.clock.advance(20)
    group.turn(20, only=main)  # the source marks pass the deadline everywhere...
    assert group.alerts("missing") == []  # ...but the stalled shard's hop mark does not
    group.turn(6)  # the alias value's process forwards the pickup, then its hop marks move
    group.turn(6)
    assert group.alerts("missing") == []
    (outcome,) = group.out("observer.outcomes")
    assert outcome["steps"]["picked_up"] == "2026-01-01T00:00:05Z"


def test_a_missing_step_via_an_alias_fires_once_the_hop_marks_pass_it(group: Group) -> None:
    key, tn = keys_on_different_shards()
    alias_shard = shard(alias_flow("delivery", "tracking"), tn)
    group.start(keyed=[s for s in range(SHARDS) if s != alias_shard])
    group.start(routes=False, keyed=[alias_shard])
    group.send("shipping", "Ready", key, 0)
    group.send("shipping", "Booked", key, 1, tn=tn)
    group.turn(6)
    group.clock.advance(15)
    group.turn(8)
    (missing,) = group.alerts("missing")
    assert (missing["key"], missing["step"]) == (key, "picked_up")
    assert group.out("cmds") == [{"type": "Chase", "tn": tn}]


def test_a_process_that_dies_mid_flight_leaves_nothing_applied_twice(group: Group) -> None:
    key, tn = keys_on_different_shards()
    first = group.start()
    first.world.router_sink.hold()  # the broker never acknowledges its hops: they stay in
    group.send("shipping", "Ready", key, 0)  # its outbox, and nothing it read is committed
    group.send("carrier", "PickedUp", tn, 3)
    group.send("shipping", "Booked", key, 1, tn=tn)
    group.turn(4)
    assert any(b'"registered"' in v for v in group.store.outbox_entries().values())
    group.processes.remove(first)  # SIGKILL: no revocation, no commit
    second = group.start()  # reads every shard again and publishes the outbox again
    group.turn(10, only=second)
    group.send("carrier", "Delivered", tn, 8)  # not a step: ignored
    group.turn(4, only=second)
    (outcome,) = group.out("observer.outcomes")
    assert outcome["aliases"] == {"tracking": tn} and outcome["outcome"] == "completed"
    assert outcome["steps"]["picked_up"] == "2026-01-01T00:00:03Z"
    assert group.out("observer.alerts") == []
    group.turn(20, only=second)
    assert group.store.outbox_entries() == {}


def test_a_deploy_that_brings_the_first_aliases_turns_hop_marks_on(tmp_path: Path) -> None:
    g = Group(tmp_path)
    plain = tmp_path / "plain.yaml"  # what ran before: no aliases, no hop marks
    plain.write_text(
        "flow: plain\nversion: 1\nsources:\n  shipping: {topic: shipping, type: value.type,"
        " key: value.id}\nsteps:\n  - {step: ready, on: shipping.Ready}\n"
    )
    world = InMemoryWorld(g.config, clock=g.clock, broker=g.broker, store=g.store)
    runtime = Runtime(
        g.config,
        load_registry([plain]),
        world.ports(),
        metrics=Metrics(CollectorRegistry()),
        health=Health(g.clock.monotonic),
    )
    assert runtime.open()
    tracker = runtime.tracker
    assert tracker.hop_marks is None and tracker.shards.hops == 0
    g.processes.append(Process(world, runtime))
    g.turn(3)
    tracker.deployed(load_registry([g.flow]))
    assert tracker.hop_marks is not None and tracker.shards.hops == SHARDS
    g.turn(6)  # the hop marks of every shard come round: the watermarks are known again
    assert len(tracker.shards.values(tracker.ticker.partitions)) == SHARDS
    g.close()
