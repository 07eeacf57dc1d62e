"""Flow versions kept with the group's state (contract §8) on in-memory adapters: an instance
runs on its own version after a restart with only newer files, flow files that change are
deployed without a restart (an invalid or refused change changes nothing), a new version's new
topic is read at once, superseded versions retire once unused, and an instance whose version is
really gone is never run on another one. (Against Redis and Kafka: tests/integration,
tests/e2e/test_versions.py.)"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from observer.adapters.memory import (
    InMemoryBroker,
    InMemoryFlowFiles,
    InMemoryFlowStore,
    InMemoryStateStore,
    InMemoryWorld,
    LeaseTable,
    ManualClock,
)
from observer.config import ObserverConfig
from observer.errors import ConfigError
from observer.flows.compiler import compile_flows
from observer.flows.loader import load_flow_text
from observer.flows.registry import FlowRegistry
from observer.flows.stored import stored_flow
from observer.metrics import Metrics
from observer.runtime.health import Health
from observer.runtime.loop import Runtime

V1 = """
flow: shop
version: 1
sources:
  orders: {topic: orders, type: value.type, key: value.id}
  pay: {topic: pay, type: value.type, key: value.id}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 10s
    if_missing: [cancel]
retain: RETAIN
actions:
  cancel:
    publish: {topic: cmds, key: "{{ key }}", value: {type: CancelV1, id: "{{ key }}"}}
"""
# v2: a longer window, another command, and a step on a topic v1 does not read
V2 = """
flow: shop
version: 2
sources:
  orders: {topic: orders, type: value.type, key: value.id}
  pay: {topic: pay, type: value.type, key: value.id}
  ship: {topic: ship, type: value.type, key: value.id}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 30s
    if_missing: [cancel]
  - step: shipped
    on: ship.Shipped
    within: 1m
retain: RETAIN
actions:
  cancel:
    publish: {topic: cmds, key: "{{ key }}", value: {type: CancelV2, id: "{{ key }}"}}
"""
SHARDS = 2


def text(flow: str, retain: str = "1h") -> str:
    return flow.replace("RETAIN", retain)


class Group:
    """The surroundings one observer group shares: broker, state, deployed versions, time."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.broker = InMemoryBroker()
        for topic in ("orders", "pay", "ship"):
            self.broker.create(topic, 1)
        self.store = InMemoryStateStore()
        self.flows = InMemoryFlowStore(self.clock.now_ms, self.store.slot_states)
        self.leases = LeaseTable(self.clock.monotonic)
        self.config = ObserverConfig(
            group_id="g",
            shards=SHARDS,
            idle_grace_ms=0,
            commit_interval_ms=0,
            tick_interval_ms=20,
            mark_interval_ms=20,
            retire_interval_ms=5_000,
            retire_after_ms=0,
        )

    def start(self, files: dict[str, str], *, keep: bool = True, check: Any = None) -> Process:
        """An `observer run` process given `files` (keep: with the group's deployed versions)."""
        world = InMemoryWorld(
            self.config,
            clock=self.clock,
            broker=self.broker,
            store=self.store,
            lease_table=self.leases,
            flows=self.flows if keep else None,
            flow_files=InMemoryFlowFiles(files) if keep else None,
        )
        loaded = [lf for name, t in files.items() for lf in load_flow_text(t, name)[0]]
        metrics = Metrics(CollectorRegistry())
        runtime = Runtime(
            self.config,
            compile_flows(loaded),
            world.ports(),
            metrics=metrics,
            health=Health(self.clock.monotonic),
            check=check,
        )
        assert runtime.open()
        return Process(self, world, runtime, metrics)

    def send(self, topic: str, etype: str, key: str) -> None:
        value = orjson.dumps({"type": etype, "id": key})
        self.broker.append(topic, None, key.encode(), value, (), self.clock.now_ms())

    def records(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.broker.records(topic)]

    def alerts(self, kind: str) -> list[tuple[str, int]]:
        return [
            (a["key"], a["version"]) for a in self.records("observer.alerts") if a["kind"] == kind
        ]

    def commands(self) -> list[tuple[str, str]]:
        return [(c["id"], c["type"]) for c in self.records("cmds")]


class Process:
    def __init__(self, group: Group, world: InMemoryWorld, runtime: Runtime, metrics: Metrics):
        self.group, self.world, self.runtime, self.metrics = group, world, runtime, metrics

    def turn(self, n: int = 1, seconds: float = 0.05) -> None:
        for _ in range(n):
            self.runtime.cycle()
            self.group.clock.advance(seconds)

    def wait(self, seconds: float) -> None:
        """Let `seconds` of time pass, turning the loop every 50 ms."""
        self.turn(round(seconds / 0.05))

    def versions(self) -> list[int]:
        return self.runtime.deployments.registry.versions("shop")

    def stop(self) -> None:
        self.runtime.stop()
        self.runtime.close()

    def files(self) -> InMemoryFlowFiles:
        assert self.world.flow_files is not None
        return self.world.flow_files


def test_an_instance_finishes_on_its_own_version_after_a_restart_with_only_the_newer_file(
    caplog: pytest.LogCaptureFixture,
) -> None:
    group = Group()
    first = group.start({"shop-v1.yaml": text(V1)})
    group.send("orders", "Placed", "o-1")
    first.turn(6)
    first.stop()

    caplog.set_level(logging.INFO)
    second = group.start({"shop-v2.yaml": text(V2)})
    assert (
        "restored from the store (not among the flow files): shop v1 (shop-v1.yaml" in caplog.text
    )
    assert second.versions() == [1, 2]
    group.send("orders", "Placed", "o-2")  # a new instance: the newest version
    second.wait(12)  # o-1's v1 window (10s) passed; o-2's v2 window (30s) did not
    assert group.alerts("missing") == [("o-1", 1)]
    assert group.commands() == [("o-1", "CancelV1")]
    second.wait(20)
    assert group.alerts("missing") == [("o-1", 1), ("o-2", 2)]
    assert group.commands() == [("o-1", "CancelV1"), ("o-2", "CancelV2")]
    second.stop()


def test_a_changed_flow_file_is_deployed_without_a_restart_and_its_new_topic_read() -> None:
    group = Group()
    proc = group.start({"shop.yaml": text(V1)})
    group.send("orders", "Placed", "o-1")
    proc.turn(4)
    proc.files().write("shop.yaml", text(V2))  # edited in place, version bumped
    proc.wait(2.5)  # the files are looked at every deploy_poll_ms (2 s)
    assert proc.versions() == [1, 2]
    assert proc.metrics.deploy_generation._value.get() == 2
    group.send("orders", "Placed", "o-2")
    group.send("pay", "Paid", "o-2")
    group.send("ship", "Shipped", "o-2")  # a topic only v2 reads
    proc.wait(12)
    assert group.alerts("missing") == [("o-1", 1)]  # on v1's 10s window
    outcomes = [(o["key"], o["version"], o["outcome"]) for o in group.records("observer.outcomes")]
    assert outcomes == [("o-2", 2, "completed")]
    proc.stop()


@pytest.mark.parametrize(
    ("change", "logged"),
    [
        (text(V1).replace("within: 10s", "within: 10s\n    warn: nonsense"), "shop.yaml:13"),
        (text(V1).replace("within: 10s", "within: 20s"), "a changed flow needs a new version"),
    ],
    ids=["invalid", "changed-but-same-version"],
)
def test_a_change_that_is_invalid_or_keeps_its_version_changes_nothing(
    caplog: pytest.LogCaptureFixture, change: str, logged: str
) -> None:
    group = Group()
    proc = group.start({"shop.yaml": text(V1)})
    before = proc.runtime.deployments.registry
    proc.files().write("shop.yaml", change)
    proc.wait(2.5)
    assert logged in caplog.text and "nothing changes" in caplog.text
    assert proc.runtime.deployments.registry is before
    assert group.flows.generation() == 1
    group.send("orders", "Placed", "o-1")
    proc.wait(11)
    assert group.alerts("missing") == [("o-1", 1)]  # still the 10s window
    proc.stop()


def test_a_restart_with_a_changed_file_that_kept_its_version_is_refused() -> None:
    group = Group()
    group.start({"shop.yaml": text(V1)}).stop()
    with pytest.raises(ConfigError, match=r"shop.yaml:3: flow 'shop': version 1 is already"):
        group.start({"shop.yaml": text(V1).replace("within: 10s", "within: 20s")})
    # a comment or a new layout is not a change
    group.start(
        {"shop.yaml": "# checked in CI\n" + text(V1).replace("{topic: cmds,", "{ topic: cmds,")}
    ).stop()


def test_a_superseded_version_retires_once_no_instance_uses_it() -> None:
    group = Group()
    proc = group.start({"shop.yaml": text(V1, retain="2s")})
    group.send("orders", "Placed", "o-1")
    proc.turn(4)
    proc.files().write("shop.yaml", text(V2, retain="2s"))
    proc.wait(6)  # a retirement pass ran: o-1 is still open on v1
    assert proc.versions() == [1, 2]
    assert proc.metrics.version_instances.labels("shop", "1")._value.get() == 1
    group.send("pay", "Paid", "o-1")  # o-1 completes, and is retained 2s
    proc.wait(8)
    assert proc.versions() == [2]
    assert sorted(group.flows.flows) == ["shop:2"]


def test_an_instance_whose_version_is_gone_is_never_run_on_another_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Versions not kept (no flow store): v1's instance after a restart with only v2."""
    group = Group()
    first = group.start({"shop-v1.yaml": text(V1)}, keep=False)
    group.send("orders", "Placed", "o-1")
    first.turn(6)
    first.stop()
    second = group.start({"shop-v2.yaml": text(V2)}, keep=False)
    group.send("pay", "Paid", "o-1")
    second.wait(35)
    assert group.alerts("missing") == [] and group.commands() == []
    (dead,) = group.broker.records("observer.dlq")
    reason = dict(dead.headers)["observer-error"]
    assert "flow 'shop' version 1 is not deployed (deployed: v2)" in str(reason)
    assert second.metrics.version_unavailable.labels("shop", "1")._value.get() >= 2
    assert "is not run on another version" in caplog.text
    second.stop()


def test_a_version_whose_webhooks_cannot_run_here_is_refused_from_files_and_reported_from_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The check is what `observer run` passes: webhook secrets and destinations."""

    def check(registry: FlowRegistry) -> None:
        if any(f.version == 2 for f in registry):
            raise ConfigError("webhooks: flow 'shop' v2 action 'page': HOOK_KEY is not set")

    group = Group()
    proc = group.start({"shop.yaml": text(V1)}, check=check)
    proc.files().write("shop.yaml", text(V2))
    proc.wait(2.5)
    assert "cannot run; nothing changes: webhooks: flow 'shop' v2" in caplog.text
    assert proc.versions() == [1] and group.flows.generation() == 1
    # deployed by someone else (observer deploy --no-secret-check): run, and said loudly
    (lf,), _ = load_flow_text(text(V2), "shop-v2.yaml")
    group.flows.deploy([stored for stored in [stored_flow(lf)[0]] if stored is not None])
    proc.wait(2.5)
    assert proc.versions() == [1, 2]
    assert "cannot run fully in this process: webhooks: flow 'shop' v2" in caplog.text
    proc.stop()
