"""The runtime's logic on in-memory adapters, with a manual clock: deadlines through router,
keyed topic, tracker and store; commits only once a write is durable; store failures and
crashes; rebalances of the tracker's shards; direct routing's backpressure; retries of
deliveries. (The same behaviour against Kafka and Redis: tests/integration, tests/e2e.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from observer.adapters.memory import InMemoryStateStore, InMemoryWorld
from observer.config import ObserverConfig
from observer.errors import ObserverError
from observer.flows.compiler import load_registry
from observer.ingest import SourceRecord
from observer.metrics import Metrics
from observer.runtime.health import Health
from observer.runtime.keyed import Routed
from observer.runtime.loop import Runtime
from observer.runtime.outbox import OutboxRecord, encode_record
from observer.runtime.ports import WriteBatch
from observer.runtime.shards import shard_of, slot_id

FLOW = """
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
    if_missing: [cancel, page]
retain: 1h
actions:
  cancel:
    publish: {topic: cmds, key: "{{ key }}", value: {type: Cancel, id: "{{ key }}"}}
  page:
    webhook: {url: "http://hooks.invalid/oncall"}
"""
SHARDS = 4
TURN_S = 0.05  # clock time per turn of the loop


@dataclass
class Observer:
    """One observer process on an in-memory world, turned by hand."""

    world: InMemoryWorld
    runtime: Runtime
    metrics: Metrics

    @property
    def clock(self) -> Any:
        return self.world.clock

    @property
    def store(self) -> InMemoryStateStore:
        return self.world.store

    def turn(self, n: int = 1, seconds: float = TURN_S) -> None:
        for _ in range(n):
            self.runtime.cycle()
            self.clock.advance(seconds)

    def send(self, topic: str, etype: str, key: str, **extra: Any) -> SourceRecord:
        value = orjson.dumps({"type": etype, "id": key, **extra})
        return self.world.produce(topic, value, key=key.encode())

    def out(self, topic: str) -> list[SourceRecord]:
        return self.world.published(topic)

    def alerts(self, kind: str | None = None) -> list[dict[str, Any]]:
        found = [orjson.loads(r.value) for r in self.out("observer.alerts")]
        return [a for a in found if kind is None or a.get("kind") == kind]

    def state(self, key: str) -> bytes | None:
        return self.store.read("shop", key)[0]

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """Committed offset per partition of `topic` in `group`."""
        n = self.world.broker.partitions(topic) or 0
        out = {}
        for p in range(n):
            off = self.world.broker.committed(group, (topic, p))
            if off is not None:
                out[p] = off
        return out

    def keyed_committed(self) -> dict[int, int]:
        return self.committed("g.keyed", self.world.config.keyed_topic_name())

    def keyed_end(self) -> dict[int, int]:
        topic = self.world.config.keyed_topic_name()
        return {p: self.world.broker.end((topic, p)) for p in range(SHARDS)}

    def keyed_offset(self, key: str) -> tuple[int, int]:
        """(partition, offset) of the keyed record of `key`'s event."""
        topic = self.world.config.keyed_topic_name()
        for r in self.world.broker.records(topic):
            if r.value[:1] == b"[" and orjson.loads(r.value)[3] == key:
                return r.partition, r.offset
        raise AssertionError(f"no keyed record of {key}")


def observer(tmp_path: Path, world: InMemoryWorld | None = None, **over: Any) -> Observer:
    flow = tmp_path / "flow.yaml"
    if not flow.exists():
        flow.write_text(FLOW)
    settings: dict[str, Any] = {
        "group_id": "g",
        "shards": SHARDS,
        "idle_grace_ms": 0,
        "commit_interval_ms": 0,
        "commit_delay_ms": 2_000,
        "tick_interval_ms": 20,
        "mark_interval_ms": 20,
        "batch_size": 100,
        **over,
    }
    config = ObserverConfig(**settings)
    if world is None:
        world = InMemoryWorld(config)
        world.broker.create("orders", 2)
        world.broker.create("pay", 2)
    metrics = Metrics(CollectorRegistry())
    runtime = Runtime(
        config,
        load_registry([flow]),
        world.ports(),
        metrics=metrics,
        health=Health(world.clock.monotonic),
    )
    assert runtime.open()
    return Observer(world, runtime, metrics)


@pytest.fixture
def obs(tmp_path: Path) -> Iterator[Observer]:
    o = observer(tmp_path)
    yield o
    o.runtime.stop()
    o.runtime.close()


def test_a_missing_payment_is_alerted_and_compensated_once_its_deadline_passes(
    obs: Observer,
) -> None:
    obs.send("orders", "Placed", "o-1")
    obs.send("orders", "Placed", "o-2")
    obs.turn(3)
    obs.send("pay", "Paid", "o-2")
    obs.turn(3)
    assert obs.alerts() == [] and obs.state("o-1") is not None
    assert obs.store.due_time("shop", "o-1") is not None
    obs.turn(1, seconds=10.0)  # the source partitions are read: their watermark is the clock
    obs.turn(3)
    (alert,) = obs.alerts("missing")
    assert (alert["key"], alert["step"]) == ("o-1", "paid")
    assert [orjson.loads(r.value) for r in obs.out("cmds")] == [{"type": "Cancel", "id": "o-1"}]
    ((_shard, hook),) = obs.world.webhooks.submitted
    assert hook.webhook == "http://hooks.invalid/oncall"
    assert obs.store.outbox_entries() == {}  # everything acknowledged was deleted
    obs.turn(20)
    assert len(obs.alerts("missing")) == 1


def test_offsets_are_committed_only_once_their_write_is_durable(obs: Observer) -> None:
    obs.send("orders", "Placed", "o-1")
    obs.turn(4)
    assert obs.state("o-1") is not None  # stored...
    assert obs.keyed_committed() == {}  # ...but not committed: Redis may still lose it
    obs.turn(1, seconds=2.0)  # commit_delay_ms later
    obs.turn(2)
    partition, offset = obs.keyed_offset("o-1")
    assert obs.keyed_committed()[partition] > offset
    # the router commits the source offsets once the keyed records are acknowledged
    record_partition = obs.out("orders")[0].partition
    assert obs.committed("g", "orders")[record_partition] == 1


def test_a_crash_that_loses_confirmed_writes_is_repaired_from_the_committed_offsets(
    obs: Observer,
) -> None:
    obs.send("orders", "Placed", "o-1")
    obs.turn(4)
    assert obs.state("o-1") is not None and obs.keyed_committed() == {}
    obs.store.crash(down_for=3)  # nothing was synced: the write of o-1 is lost
    assert obs.state("o-1") is None
    # the next requests fail; the loop goes on, tries the store after each backoff (0.1, 0.2,
    # 0.4, ... s), reconnects and reads the keyed partitions again
    for _ in range(100):
        obs.turn(1)
        if obs.runtime.health.redis_ok:
            break
    obs.turn(4)
    assert obs.state("o-1") is not None
    assert obs.runtime.health.redis_ok and obs.metrics.store_errors._value.get() >= 3
    obs.turn(1, seconds=11.0)
    obs.turn(3)
    assert [a["key"] for a in obs.alerts("missing")] == ["o-1"]


@pytest.mark.parametrize("applied", [False, True])
def test_a_write_that_fails_is_redone_and_its_records_published_once(
    obs: Observer, applied: bool
) -> None:
    obs.send("orders", "Placed", "o-1")
    obs.turn(4)
    obs.turn(1, seconds=11.0)
    obs.store.fail_writes(1, applied=applied)  # the tick's write with the alert
    obs.turn(6)
    alerts = obs.out("observer.alerts")
    assert [orjson.loads(a.value)["key"] for a in alerts] == ["o-1"]
    assert len(obs.out("cmds")) == 1
    assert obs.store.outbox_entries() == {}
    assert obs.metrics.store_errors._value.get() >= 1 and obs.runtime.health.redis_ok


def test_a_rebalance_during_a_store_outage_does_not_wait_for_the_store(obs: Observer) -> None:
    """While the store is down the tracker still serves its consumer: a revocation completes
    (another process can own the shards meanwhile), nothing written since the last commit is
    committed, and once the store answers the kept partitions are read again."""
    keys = ["a", "b", "c", "d", "e", "f", "g", "h"]
    for k in keys:
        obs.send("orders", "Placed", k)
    obs.turn(4)
    keyed = obs.world.config.keyed_topic_name()
    source = obs.world.keyed_source
    assert source is not None and obs.keyed_committed() == {}
    obs.store.available = False
    obs.store.crash(down_for=0)  # the unsynced writes are lost
    obs.turn(3)
    assert not obs.runtime.health.redis_ok
    source.revoke([(keyed, 0), (keyed, 1)])
    obs.turn(2)  # served while the store is still down
    assert obs.runtime.tracker.shards.owned() == [2, 3]
    assert obs.keyed_committed() == {}  # the lost writes' offsets are not committed
    assert not obs.runtime.health.redis_ok
    obs.store.available = True
    for _ in range(100):  # the next attempt (backoff) reconnects and reads 2 and 3 again
        obs.turn(1)
        if obs.runtime.health.redis_ok:
            break
    obs.turn(4)
    kept = [k for k in keys if shard_of(slot_id("shop", k), SHARDS) in (2, 3)]
    assert kept and all(obs.state(k) is not None for k in kept)


def test_a_revoked_shard_is_committed_and_a_lost_one_is_not(obs: Observer) -> None:
    keys = ["a", "b", "c", "d", "e", "f", "g", "h"]
    for k in keys:
        obs.send("orders", "Placed", k)
    obs.turn(4)
    keyed = obs.world.config.keyed_topic_name()
    source = obs.world.keyed_source
    assert source is not None
    read = {tp[1]: pos for tp, (_lo, _hi, pos) in source.offsets([(keyed, 0), (keyed, 1)]).items()}
    assert obs.keyed_committed() == {}  # nothing durable yet
    source.revoke([(keyed, 0), (keyed, 1)])
    source.lose([(keyed, 2)])
    obs.turn(1)
    committed = obs.keyed_committed()
    # revoked: what was read is committed, once durable (the revocation waited for it)
    assert (committed[0], committed[1]) == (read[0], read[1])
    assert 2 not in committed  # lost: another process has it, nothing is committed
    assert obs.runtime.tracker.shards.owned() == [3]
    obs.send("orders", "Placed", next(k for k in ["x", "y", "z", "w"] if shard(k) == 0))
    obs.turn(3, seconds=1.0)
    assert obs.keyed_committed()[0] == read[0]  # a shard not owned: not read, not committed


def shard(key: str) -> int:
    return shard_of(slot_id("shop", key), SHARDS)


def test_an_assigned_shard_publishes_what_its_outbox_still_holds(tmp_path: Path) -> None:
    o = observer(tmp_path)
    keyed = o.world.config.keyed_topic_name()
    source = o.world.keyed_source
    assert source is not None
    o.turn(2)
    source.revoke([(keyed, 1)])
    o.turn(1)
    # a previous owner of shard 1 wrote a record and died before publishing it
    left = OutboxRecord(
        "oid-1", "action", "cmds", b"k", b'{"left": 1}', (("observer-id", b"oid-1"),)
    )
    o.store.write(WriteBatch(outbox_adds=[(1, "oid-1", encode_record(left))])).result()
    o.turn(2)
    assert o.out("cmds") == []
    source.assign([(keyed, 1)])
    o.turn(2)
    (rec,) = o.out("cmds")
    assert (rec.value, dict(rec.headers)["observer-id"]) == (b'{"left": 1}', b"oid-1")
    assert o.store.outbox_entries() == {}
    o.runtime.stop()
    o.runtime.close()


def test_a_record_the_broker_refused_is_published_again_after_a_backoff(obs: Observer) -> None:
    obs.send("orders", "Placed", "o-1")
    obs.turn(4)
    obs.world.sink.fail_next(1)  # the first record of the deadline: its alert
    obs.turn(1, seconds=11.0)
    obs.turn(2)
    assert obs.alerts() == [] and len(obs.out("cmds")) == 1
    assert len(obs.store.outbox_entries()) == 1
    assert obs.metrics.publish_failures.labels("alert")._value.get() == 1
    obs.turn(12)  # OBSERVER_RETRY_BACKOFF_MS: 500 ms
    assert len(obs.alerts("missing")) == 1 and obs.store.outbox_entries() == {}


def test_direct_routing_reads_no_more_while_the_tracker_is_behind(tmp_path: Path) -> None:
    o = observer(tmp_path, routing="direct", batch_size=2, mark_interval_ms=1_000)
    local = o.world.local
    assert local is not None
    for i in range(60):
        o.send("orders", "Placed", f"o-{i}")
    limit = 4 * (2 + SHARDS)  # a few batches and a round of marks
    most = 0
    for _ in range(80):
        o.turn()
        most = max(most, local.unread())
    # a turn routes at most a batch (2 events) and a round of marks past the limit
    assert limit <= most <= limit + 2 + SHARDS
    o.turn(200)
    assert all(o.state(f"o-{i}") is not None for i in range(60))
    o.runtime.stop()
    o.runtime.close()
    assert o.committed("g", "orders") == {
        p: o.world.broker.end(("orders", p)) for p in range(2) if o.world.broker.end(("orders", p))
    }


def test_direct_routing_stops_when_another_process_took_its_lease(tmp_path: Path) -> None:
    o = observer(tmp_path, routing="direct", lease_ttl_ms=3_000)
    o.turn(2)
    table = o.world.lease_table
    assert table.current() == "process-1"
    o.clock.advance(3.5)  # stalled for longer than the TTL: another process took over
    table.holder, table.until = "process-2", o.clock.monotonic() + 3.0
    with pytest.raises(ObserverError, match="lease of prefix observer was lost"):
        o.turn()
    o.runtime.stop()
    o.runtime.close()
    assert table.current() == "process-2"  # not released by the process that lost it


def test_direct_routing_hands_events_over_without_a_json_round_trip(tmp_path: Path) -> None:
    # The keyed topic kept in memory takes the router's events as they are (JSON sources:
    # their captured values are JSON's types already); the tracker applies them the same.
    o = observer(tmp_path, routing="direct", mark_interval_ms=1_000)
    local = o.world.local
    assert local is not None
    o.send("orders", "Placed", "o-1")
    held: dict[tuple[int, int], object] = {}
    for _ in range(4):  # what the keyed topic holds after each turn (kept until committed)
        o.turn(1)
        held.update(((p, off), rec.value) for p, off, rec, _done in local._log)
    seen = list(held.values())
    events = [v for v in seen if isinstance(v, Routed)]
    assert [(r.flow, r.event.key, r.event.type) for r in events] == [("shop", "o-1", "Placed")]
    assert o.state("o-1") is not None
