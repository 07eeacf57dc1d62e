"""The router's bookkeeping with in-memory ports: where each event goes, what is committed when,
and the marks. The Kafka side of the same behaviour runs in tests/integration and tests/e2e."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from observer.adapters.memory import ManualClock
from observer.config import ObserverConfig
from observer.flows.compiler import load_registry
from observer.ingest import Ingest, SourceRecord
from observer.metrics import Metrics
from observer.runtime.keyed import Mark, Routed, decode_keyed
from observer.runtime.local import LocalKeyedTopic
from observer.runtime.ports import RebalanceListener
from observer.runtime.router import Router
from observer.runtime.shards import shard_of, slot_id
from observer.runtime.watermark import TopicPartition
from observer.topics import Topics

FLOW = """
flow: shop
version: 1
sources:
  orders: {topic: orders, type: value.type, key: value.id}
  pay: {topic: pay, type: value.type, key: value.order}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 10s
"""
T0 = 1_767_225_600_000


class Source:
    def __init__(self) -> None:
        self.batches: list[list[SourceRecord]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.ends: dict[TopicPartition, int] = {}

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self.topics = list(topics)

    def poll(self, max_records: int, timeout_s: float) -> list[SourceRecord]:
        return self.batches.pop(0) if self.batches else []

    def commit(self, offsets: Mapping[TopicPartition, int], wait: bool) -> None:
        self.commits.append(dict(offsets))

    def offsets(
        self, tps: Iterable[TopicPartition]
    ) -> dict[TopicPartition, tuple[int | None, int | None, int | None]]:
        return {tp: (0, self.ends.get(tp, 1_000), None) for tp in tps}

    def committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {}

    def healthy(self) -> bool:
        return True


class Sink:
    """Holds records until `ack()`."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int | None, bytes | None]] = []
        self.waiting: list[Callable[[str | None], None]] = []
        self.reports = 0

    def produce(
        self,
        topic: str,
        partition: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, Any]],
        timestamp: int | None,
        on_done: Callable[[str | None], None] | None,
    ) -> None:
        self.sent.append((topic, partition, value))
        if on_done is not None:
            self.waiting.append(on_done)

    def produce_values(
        self,
        topic: str,
        records: Sequence[tuple[int, bytes, Callable[[str | None], None] | None]],
    ) -> None:
        for partition, value, on_done in records:
            self.produce(topic, partition, None, value, (), None, on_done)
        self.reports += sum(1 for *_x, d in records if d is not None)

    def ack(self, error: str | None = None) -> None:
        for done in self.waiting:
            done(error)
        self.waiting.clear()

    def poll(self, timeout_s: float) -> None: ...

    def flush(self, timeout_s: float) -> int:
        self.ack()
        return 0

    def close(self) -> None: ...


def rec(topic: str, partition: int, offset: int, value: bytes, ts: int) -> SourceRecord:
    return SourceRecord(topic, partition, offset, b"some-other-key", value, (), ts)


@pytest.fixture
def router(tmp_path: Path) -> tuple[Router, Source, Sink]:
    (tmp_path / "flow.yaml").write_text(FLOW)
    registry = load_registry([tmp_path / "flow.yaml"])
    config = ObserverConfig(shards=4, mark_interval_ms=1, commit_interval_ms=0, idle_grace_ms=0)
    source, sink = Source(), Sink()
    r = Router(
        config,
        Ingest(registry, Topics(dlq="dlq")),
        source=source,  # type: ignore[arg-type]
        sink=sink,
        metrics=Metrics(CollectorRegistry()),
        clock=ManualClock(T0 + 60_000),
        keyed_topic="keyed",
    )
    r.start()
    r.assigned([("orders", 0), ("pay", 1)])
    return r, source, sink


def test_events_go_to_their_shard_and_offsets_wait_for_the_acknowledgements(
    router: tuple[Router, Source, Sink],
) -> None:
    r, source, sink = router
    source.batches.append(
        [
            rec("orders", 0, 7, b'{"type": "Placed", "id": "o-1"}', T0),
            rec("pay", 1, 3, b'{"type": "Paid", "order": "o-1"}', T0 + 5),
            rec("pay", 1, 4, b"{not json", T0 + 6),
            rec("orders", 0, 8, b'{"type": "Unknown", "id": "o-2"}', T0 + 7),
        ]
    )
    assert r.poll(0) == 4
    events = [(p, decode_keyed(v)) for t, p, v in sink.sent if t == "keyed" and v and v[:1] == b"["]
    shard = shard_of(slot_id("shop", "o-1"), 4)
    assert [(p, x.event.type, x.topic, x.offset) for p, x in events if isinstance(x, Routed)] == [
        (shard, "Placed", "orders", 7),
        (shard, "Paid", "pay", 3),
    ]
    assert [(t, v) for t, _p, v in sink.sent if t == "dlq"] == [("dlq", b"{not json")]
    assert sink.reports == 1  # one delivery report per keyed partition of the batch
    assert source.commits == []  # nothing acknowledged yet
    sink.ack()
    r.poll(0)
    assert source.commits[-1] == {("orders", 0): 9, ("pay", 1): 5}


def test_a_batch_is_committed_only_after_every_earlier_batch(
    router: tuple[Router, Source, Sink],
) -> None:
    r, source, sink = router
    source.batches.append([rec("orders", 0, 0, b'{"type": "Placed", "id": "a"}', T0)])
    r.poll(0)
    first = list(sink.waiting)
    sink.waiting.clear()
    source.batches.append([rec("orders", 0, 1, b'{"type": "Placed", "id": "b"}', T0)])
    r.poll(0)
    sink.ack()  # the second batch is acknowledged first
    r.poll(0)
    assert all(("orders", 0) not in c for c in source.commits)
    for done in first:
        done(None)
    r.poll(0)
    assert source.commits[-1] == {("orders", 0): 2}


def test_marks_carry_each_partition_watermark_to_every_shard_after_the_events(
    router: tuple[Router, Source, Sink],
) -> None:
    r, source, sink = router
    source.ends = {("orders", 0): 10, ("pay", 1): 10}  # more to read: watermark = last read
    source.batches.append(
        [
            rec("orders", 0, 0, b'{"type": "Placed", "id": "a"}', T0 + 100),
            rec("pay", 1, 0, b'{"type": "Paid", "order": "a"}', T0 + 50),
        ]
    )
    r.poll(0)
    marks = [(p, decode_keyed(v)) for t, p, v in sink.sent if v and v[:1] == b"{"]
    assert sorted(p or 0 for p, _m in marks) == [0, 1, 2, 3]
    assert {m for _p, m in marks} == {Mark((("orders", 0, T0 + 100), ("pay", 1, T0 + 50)))}
    last_event = max(i for i, (_t, _p, v) in enumerate(sink.sent) if v and v[:1] == b"[")
    first_mark = min(i for i, (_t, _p, v) in enumerate(sink.sent) if v and v[:1] == b"{")
    assert last_event < first_mark


def test_a_record_the_producer_gave_up_on_stops_the_router(
    router: tuple[Router, Source, Sink],
) -> None:
    r, source, sink = router
    source.batches.append([rec("orders", 0, 0, b'{"type": "Placed", "id": "a"}', T0)])
    r.poll(0)
    sink.ack("Local: Message timed out")
    with pytest.raises(Exception, match="cannot write to the keyed topic"):
        r.poll(0)
    assert source.commits == []


class Tracker:
    """The rebalance listener side of the tracker: what the local topic tells it."""

    def __init__(self) -> None:
        self.assigned_tps: list[TopicPartition] = []
        self.reports: list[dict[TopicPartition, int]] = []

    def assigned(self, tps: list[TopicPartition]) -> None:
        self.assigned_tps += tps

    def revoked(self, tps: list[TopicPartition]) -> None: ...

    def lost(self, tps: list[TopicPartition]) -> None: ...

    def commit_done(self, error: str | None, offsets: dict[TopicPartition, int]) -> None:
        self.reports.append(offsets)


def test_direct_routing_commits_source_offsets_only_after_the_tracker_commits(
    tmp_path: Path,
) -> None:
    """`routing: direct`: the keyed topic in memory. Its records are acknowledged by the
    tracker's commits; a seek reads again what is not committed; dead letters still go to
    the real producer."""
    (tmp_path / "flow.yaml").write_text(FLOW)
    registry = load_registry([tmp_path / "flow.yaml"])
    config = ObserverConfig(shards=4, mark_interval_ms=10_000, commit_interval_ms=0)
    source, sink = Source(), Sink()
    local = LocalKeyedTopic("keyed", 4, sink=sink, source=source)  # type: ignore[arg-type]
    r = Router(
        config,
        Ingest(registry, Topics(dlq="dlq")),
        source=source,  # type: ignore[arg-type]
        sink=local.sink,
        metrics=Metrics(CollectorRegistry()),
        clock=ManualClock(T0 + 60_000),
        keyed_topic="keyed",
    )
    r.start()
    r.assigned([("orders", 0), ("pay", 1)])
    tracker = Tracker()
    local.source.subscribe(["keyed"], tracker)
    source.batches.append(
        [
            rec("orders", 0, 7, b'{"type": "Placed", "id": "o-1"}', T0),
            rec("pay", 1, 3, b"{not json", T0 + 1),
            rec("orders", 0, 8, b'{"type": "Placed", "id": "o-2"}', T0 + 2),
        ]
    )
    r.poll(0)
    assert [t for t, _p, _v in sink.sent] == ["dlq"]  # only the dead letter left the process
    sink.ack()
    assert local.unread() == 2 + 4  # two events and a mark per shard
    source.batches.append([rec("orders", 0, 9, b'{"type": "Placed", "id": "o-3"}', T0 + 3)])
    r.poll(0, read=False)  # the tracker is behind: the router reads nothing more
    assert local.unread() == 2 + 4 and len(source.batches) == 1
    source.batches.clear()
    got = local.source.poll(100, 0)
    assert local.unread() == 0
    assert sorted(tracker.assigned_tps) == [("keyed", p) for p in range(4)]
    events = [(x.partition, decode_keyed(x.value)) for x in got]
    routed = [(p, e.event.key) for p, e in events if isinstance(e, Routed)]
    assert sorted(k for _p, k in routed) == ["o-1", "o-2"]
    assert all(p == shard_of(slot_id("shop", k), 4) for p, k in routed)
    r.poll(0)
    assert source.commits == []  # stored maybe, not committed by the tracker: nothing to commit

    # a store failure: the tracker reads again from its committed offsets
    local.source.seek({("keyed", p): 0 for p in range(4)})
    assert [x.offset for x in local.source.poll(100, 0)] == [x.offset for x in got]
    assert local.source.poll(100, 0) == []

    ends = {("keyed", x.partition): x.offset + 1 for x in got}
    local.source.commit(ends, wait=False)
    r.poll(0)
    assert source.commits[-1] == {("orders", 0): 9, ("pay", 1): 4}
    local.source.poll(100, 0)
    assert tracker.reports == [ends]  # reported from the poll after, as Kafka does
    assert local.source.committed([("keyed", 0)]) == {("keyed", 0): ends.get(("keyed", 0), 0)}
