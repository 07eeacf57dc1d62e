"""Guardrails (contract §7) through the runtime on in-memory adapters, with a manual clock:
two processes sharing the shards raise one incident and publish at most `count` actions per
interval between them; held actions are kept in the store with their instance, released (the
same observer-ids, once) or dropped (recorded); a pause holds every action of a flow; a decider
that dies after deciding loses nothing and publishes nothing twice. (Against Kafka and Redis:
tests/e2e/test_guardrails.py and the chaos test's storm phase.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from observer.adapters.memory import InMemoryBroker, InMemoryStateStore, InMemoryWorld
from observer.adapters.memory.clock import ManualClock
from observer.config import ObserverConfig
from observer.flows.compiler import load_registry
from observer.metrics import Metrics
from observer.runtime.health import Health
from observer.runtime.held_ops import Selection, held_actions, release_or_drop
from observer.runtime.loop import Runtime
from observer.runtime.query import InstanceQuery, format_instance
from observer.runtime.shards import shard_of, slot_id

FLOW = """
flow: shop
version: 1
sources:
  orders: {topic: orders, type: value.type, key: value.id, id: value.eid, time: value.at}
  pay: {topic: pay, type: value.type, key: value.id, id: value.eid, time: value.at}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 10s
    if_missing: [cancel]
retain: 1h
guardrails:
  incident: {threshold: 5, within: 30s}
  max_actions: {count: 2, per: 1m}
actions:
  cancel:
    publish: {topic: cmds, key: "{{ key }}", value: {type: Cancel, id: "{{ key }}"}}
"""
PLAIN = FLOW.split("guardrails:")[0].replace("flow: shop", "flow: plain") + (
    "actions:" + FLOW.split("\nactions:")[1]
)
SHARDS = 4
T0 = 1_767_225_600_000
TURN_S = 0.05


class Group:
    """Observer processes sharing a broker, a store and a clock, turned by hand."""

    def __init__(self, tmp_path: Path, flow: str = FLOW) -> None:
        self.flow = tmp_path / "flow.yaml"
        self.flow.write_text(flow)
        self.config = ObserverConfig(
            group_id="g",
            shards=SHARDS,
            idle_grace_ms=0,
            commit_interval_ms=0,
            commit_delay_ms=500,
            tick_interval_ms=20,
            mark_interval_ms=20,
            guard_interval_ms=20,
            batch_size=100,
        )
        self.clock = ManualClock(T0)
        self.broker = InMemoryBroker()
        self.store = InMemoryStateStore()
        self.broker.create("orders", 2)
        self.broker.create("pay", 2)
        self.runtimes: list[Runtime] = []
        self.registries: list[CollectorRegistry] = []
        self.worlds: list[InMemoryWorld] = []

    def start(self, keyed: list[int]) -> Runtime:
        world = InMemoryWorld(self.config, clock=self.clock, broker=self.broker, store=self.store)
        assert world.keyed_source is not None
        world.keyed_source.auto_assign = False
        world.keyed_source.assign([(self.config.keyed_topic_name(), s) for s in keyed])
        runtime = Runtime(
            self.config,
            load_registry([self.flow]),
            world.ports(),
            metrics=Metrics(registry := CollectorRegistry()),
            health=Health(self.clock.monotonic),
        )
        assert runtime.open()
        self.runtimes.append(runtime)
        self.registries.append(registry)
        self.worlds.append(world)
        return runtime

    def turn(self, n: int = 1, seconds: float = TURN_S) -> None:
        for _ in range(n):
            for r in self.runtimes:
                r.cycle()
            self.clock.advance(seconds)

    def send(self, topic: str, etype: str, key: str, at_s: float) -> None:
        value = {"type": etype, "id": key, "eid": f"{etype}-{key}", "at": T0 + int(at_s * 1000)}
        self.broker.append(topic, None, key.encode(), orjson.dumps(value), (), self.clock.now_ms())

    def out(self, topic: str) -> list[tuple[dict[str, Any], str]]:
        return [
            (orjson.loads(r.value), dict(r.headers)["observer-id"].decode())
            for r in self.broker.records(topic)
        ]

    def alerts(self, kind: str) -> list[dict[str, Any]]:
        return [a for a, _id in self.out("observer.alerts") if a["kind"] == kind]

    def storm(self, n: int, flow_keys: str = "o") -> None:
        """n orders placed a second apart, none paid; then time passes every deadline."""
        for i in range(n):
            self.send("orders", "Placed", f"{flow_keys}-{i}", i)
        self.turn(5)
        self.clock.advance(n + 15.0)  # read partitions: their watermark is the clock
        self.turn(30)

    def metric(self, name: str, **labels: str) -> float:
        """Summed over the processes (the guardrails' gauges come from the deciding one)."""
        return sum(r.get_sample_value(name, labels) or 0.0 for r in self.registries)

    def close(self) -> None:
        for r in self.runtimes:
            r.stop()
            r.close()


@pytest.fixture
def group(tmp_path: Path) -> Any:
    g = Group(tmp_path)
    yield g
    g.close()


def spread_keys() -> None:
    """The storm's keys land on both processes' shards (else the test proves nothing)."""
    shards = {shard_of(slot_id("shop", f"o-{i}"), SHARDS) for i in range(12)}
    assert shards & {0, 1} and shards & {2, 3}


def test_two_processes_open_one_incident_and_publish_at_most_count_actions(group: Group) -> None:
    spread_keys()
    group.start([0, 1])
    group.start([2, 3])
    group.storm(12)
    (incident,) = group.alerts("incident")
    assert (incident["step"], incident["deviation"], incident["count"]) == ("paid", "missing", 5)
    assert len(group.out("cmds")) == 2  # the rate: 2 a minute; the rest held
    assert len(group.alerts("missing")) == 4  # the fifth opened the incident: no alert of its own
    held = held_actions(group.store, Selection("shop"))
    assert len(held) == 10
    assert {h.reason for h in held} == {"rate", "incident"}
    assert len([h for h in held if h.reason == "incident"]) == 8
    assert group.metric("observer_incidents_open", flow="shop") == 1
    assert group.metric("observer_incidents_opened_total", flow="shop") == 1
    assert group.metric("observer_actions_held", flow="shop", action="cancel") == 10
    rate = {"flow": "shop", "action": "cancel", "reason": "rate"}
    assert group.metric("observer_held_actions_total", **rate) == 2
    group.clock.advance(40.0)
    group.turn(10)
    (resolved,) = group.alerts("incident_resolved")
    assert resolved["count"] == 12  # the five that opened it and the seven after
    assert group.metric("observer_incidents_open", flow="shop") == 0
    release_or_drop(group.store, Selection("shop", key="o-2"), "release", 0)
    release_or_drop(group.store, Selection("shop", key="o-3"), "drop", 0)
    group.turn(10)
    assert group.metric("observer_actions_released_total", flow="shop", action="cancel") == 1
    assert group.metric("observer_actions_dropped_total", flow="shop", action="cancel") == 1
    assert group.metric("observer_actions_held", flow="shop", action="cancel") == 8


def test_released_actions_are_published_once_with_their_ids_and_dropped_ones_recorded(
    group: Group,
) -> None:
    group.start([0, 1, 2, 3])
    group.storm(8)
    held = {h.key: h for h in held_actions(group.store, Selection("shop"))}
    assert len(held) == 6
    oid = held["o-6"].observer_id
    assert release_or_drop(group.store, Selection("shop", key="o-6"), "release", 0) == (1, 1)
    assert release_or_drop(group.store, Selection("shop", key="o-6"), "release", 0) == (0, 0)
    group.turn(10)
    assert [i for v, i in group.out("cmds") if v["id"] == "o-6"] == [oid]
    incident = held["o-7"].incident
    assert incident is not None
    selected, dropped = release_or_drop(
        group.store, Selection("shop", incident=incident), "drop", group.clock.now_ms()
    )
    assert selected == dropped == len([h for h in held.values() if h.incident == incident]) - 1
    group.turn(10)
    assert [v["id"] for v, _ in group.out("cmds")].count("o-7") == 0
    view = InstanceQuery(load_registry([group.flow]), group.store).instance("shop", "o-7")
    assert view is not None and view["held"] == [] and view["incidents"] == [incident]
    assert [e["what"] for e in view["history"] if e["what"] in ("held", "dropped")] == [
        "held",
        "dropped",
    ]
    still = InstanceQuery(load_registry([group.flow]), group.store).instance("shop", "o-3")
    assert still is not None and [h["reason"] for h in still["held"]] == ["rate"]


def test_a_pause_holds_every_action_of_a_flow_without_guardrails_until_resumed(
    tmp_path: Path,
) -> None:
    g = Group(tmp_path, PLAIN)
    try:
        g.start([0, 1, 2, 3])
        g.store.pause("plain", "test")
        g.storm(3)
        assert g.out("cmds") == [] and len(g.alerts("missing")) == 3
        assert [h.reason for h in held_actions(g.store, Selection("plain"))] == ["paused"] * 3
        g.store.resume(None)
        g.send("orders", "Placed", "late-1", 30)
        g.turn(5)
        g.clock.advance(20.0)
        g.turn(20)
        assert [v["id"] for v, _ in g.out("cmds")] == ["late-1"]
        assert len(held_actions(g.store, Selection("plain"))) == 3  # held stays held
    finally:
        g.close()


def test_a_decider_that_dies_after_deciding_loses_nothing_and_repeats_no_id(
    group: Group,
) -> None:
    first = group.start([0, 1, 2, 3])
    published: list[Any] = []
    first.tracker.decider.publisher.publish = published.append  # type: ignore[method-assign,assignment]
    group.storm(8)  # decided and committed, never published: the process "dies" here
    assert published and group.out("cmds") == [] and group.alerts("incident") == []
    group.runtimes.remove(first)  # kill -9: no stop, no close
    group.start([0, 1, 2, 3])
    group.turn(20)
    assert len(group.alerts("incident")) == 1
    ids = [i for _v, i in group.out("cmds")]
    assert len(ids) == len(set(ids)) == 2
    assert len(held_actions(group.store, Selection("shop"))) == 6


def test_webhook_actions_are_held_and_released_the_same_way(tmp_path: Path) -> None:
    hooked = PLAIN.replace("if_missing: [cancel]", "if_missing: [page]").replace(
        "actions:\n", 'actions:\n  page:\n    webhook: {url: "http://hooks.invalid/oncall"}\n'
    )
    g = Group(tmp_path, hooked)
    try:
        g.start([0, 1, 2, 3])
        g.store.pause(None, "dry run")
        g.storm(2)
        (world,) = g.worlds
        assert world.webhooks.submitted == []
        held = held_actions(g.store, Selection("plain"))
        assert [(h.category, h.reason) for h in held] == [("webhook", "paused")] * 2
        release_or_drop(g.store, Selection("plain", key=held[0].key), "release", 0)
        g.turn(10)
        assert [r.observer_id for _s, r in world.webhooks.submitted] == [held[0].observer_id]
        text = format_instance(
            InstanceQuery(load_registry([g.flow]), g.store).instance("plain", held[1].key) or {}
        )
        assert "held actions" in text and held[1].observer_id in text
    finally:
        g.close()


def test_an_instance_waiting_for_an_alias_answer_is_a_floor_of_its_guarded_flow(
    tmp_path: Path,
) -> None:
    """Its timers wait for the answer however far the watermark went; until they fired, the
    flow's decider decides only below the earliest (else a deviation could come late)."""
    from observer.engine.core import Engine
    from observer.engine.state import KeySlot
    from observer.runtime.guard_intake import GuardIntake
    from observer.runtime.ports import SlotPut, WriteBatch
    from tests.unit.test_engine_alias_messages import booked, placed
    from tests.unit.test_engine_aliases import FLOW as DELIVERY

    f = tmp_path / "delivery.yaml"
    f.write_text(DELIVERY + "guardrails:\n  incident: {threshold: 10, within: 1m}\n")
    engine = Engine(load_registry([f]))
    slot = KeySlot("delivery", "d-1")
    engine.apply(slot, placed("d-1"), T0)
    engine.apply(slot, booked("d-1", "tn-1"), T0 + 60_000)  # registers tn-1: waits for the answer
    assert engine.next_due(slot) is None  # no timer while waiting
    intake = GuardIntake.of(engine, T0)
    batch = WriteBatch(puts=[SlotPut(0, "delivery:d-1", b"", 1, None)])
    intake.plan(batch, [], [("delivery:d-1", slot, b"")], {0: T0 + 60_000})
    ((flow, sid, floor),) = batch.floors
    assert (flow, sid) == ("delivery", "delivery:d-1") and floor is not None
    assert floor > T0 + 60_000  # the earliest of its timers
    gone = WriteBatch(deletes=[(0, "delivery:d-1")])
    intake.plan(gone, [], [], {})
    assert gone.floors == [("delivery", "delivery:d-1", None)]  # a slot that goes: no floor
    plain = GuardIntake.of(Engine(load_registry([tmp_path / "delivery.yaml"])), T0)
    plain.floored.clear()  # a flow without guardrails (or without aliases) has no floors
    batch = WriteBatch(puts=[SlotPut(0, "delivery:d-1", b"", 1, None)])
    plain.plan(batch, [], [("delivery:d-1", slot, b"")], {0: T0})
    assert batch.floors == []
