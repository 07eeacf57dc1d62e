"""CPU figures of the observer's own code on a realistic checkout workload, without Kafka or
Redis: the real runtime on the in-memory adapters (`observer/adapters/memory`). Records are
built by `benchmarks/workload.py` (JSON of ~300 B, UUID keys, 2 % of orders with a deviation),
in event-time order, on 4 partitions of each source topic.

Stages, each timed on its own and printed as events/s:
  decode   `Ingest.decode` of every record
  engine   `Engine.apply` of the decoded events on in-memory slots (no timers)
  route    the `Router`: read the source topics in batches of `--batch`, decode, write each
           event to its shard of the keyed topic, marks, commits
  track    the `Tracker` over the keyed topic the router wrote (16 shards): decode keyed
           records, slot cache, loads, `BatchPlanner` (apply, encode, next due, TTL, history,
           outbox records), the store write, publishing, the metric hooks, and the deadline
           ticker as marks move the shards' watermarks
  total    the whole `Runtime` turn by turn with `routing: direct` (router, keyed topic in
           memory, tracker, health), what `observer run` does between Kafka and Redis

Times are CPU time of the process, the set-up of each run (workload, in-memory topics) frozen
out of the garbage collector's way as `observer run` freezes what it loaded; `track` and
`total` exclude the in-memory store's own work (what Redis does), and count the in-memory
Kafka ends (a list append or slice per record).
The clock is a `ManualClock` moved by the workload's event time per batch. Memory: bytes of
serialised state and history per open instance, in the middle of the run.
Not a test: `python benchmarks/pipeline.py [--orders N] [--profile STAGE]`.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry

from benchmarks.workload import (
    FAULTS,
    OrderModel,
    RecordEncoder,
    generate,
    prepare_flow,
)
from observer.adapters.memory import InMemoryStateStore, InMemoryWorld, ManualClock
from observer.config import ObserverConfig
from observer.engine.codec import decode_slot, encode_slot
from observer.engine.core import Engine
from observer.engine.state import KeySlot
from observer.flows.compiler import load_registry
from observer.flows.registry import FlowRegistry
from observer.ingest import Ingest, SourceRecord
from observer.metrics import Metrics
from observer.runtime.health import Health
from observer.runtime.loop import Runtime
from observer.runtime.ports import DueSlots, WriteBatch

REPO = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600_000
SHARDS = 16
PARTITIONS = 4


def build_records(
    orders: int, span_s: float, seed: int, flow_file: Path
) -> tuple[Any, list[SourceRecord]]:
    tmp = Path(tempfile.mkdtemp(prefix="obs-pipeline-"))
    files = prepare_flow(flow_file, "bench", tmp)
    model = OrderModel.build(files.flow)
    enc = RecordEncoder(files)
    faults: dict[str, list[str]] = {k: [] for k in FAULTS}
    recs = []
    for i, (topic, key, value, headers, ts) in enumerate(
        generate(model, enc, orders, T0, int(span_s * 1000), seed, 0.02, FAULTS, "uuid", faults)
    ):
        recs.append(SourceRecord(topic, i % PARTITIONS, i, key, value, headers, ts))
    return files, recs


class TimedStore(InMemoryStateStore):
    """The in-memory store, its own CPU time added up (it stands for Redis: not counted)."""

    def __init__(self, history_cap: int) -> None:
        super().__init__(history_cap=history_cap)
        self.cpu_s = 0.0

    def load(self, slots: Sequence[tuple[int, str]]) -> Any:
        t = time.process_time()
        try:
            return super().load(slots)
        finally:
            self.cpu_s += time.process_time() - t

    def write(self, batch: WriteBatch) -> Any:
        t = time.process_time()
        try:
            return super().write(batch)
        finally:
            self.cpu_s += time.process_time() - t

    def due(self, watermarks: Sequence[tuple[int, int]], limit: int) -> DueSlots:
        t = time.process_time()
        try:
            return super().due(watermarks, limit)
        finally:
            self.cpu_s += time.process_time() - t


class Setup:
    """The workload, the flows and the settings every stage shares."""

    def __init__(
        self, args: argparse.Namespace, registry: FlowRegistry, records: list[SourceRecord]
    ):
        self.args = args
        self.registry = registry
        self.records = records
        self.topics = Ingest(registry).topic_names()
        n_batches = max(1, -(-len(records) // args.batch))
        # the clock moves with the workload's event time: one batch's worth per turn
        self.turn_s = (records[-1].timestamp - records[0].timestamp) / 1000.0 / n_batches
        self.keyed: list[SourceRecord] | None = None  # what the router wrote (for `track`)
        self.last_world: InMemoryWorld | None = None

    def config(self, routing: str) -> ObserverConfig:
        return ObserverConfig(
            group_id="bench",
            shards=SHARDS,
            batch_size=self.args.batch,
            history_cap=self.args.history_cap,
            routing=routing,  # type: ignore[arg-type]
        )

    def world(
        self, routing: str, records: Iterable[SourceRecord]
    ) -> tuple[InMemoryWorld, Runtime, TimedStore]:
        """A world holding `records`, and a runtime opened on it."""
        config = self.config(routing)
        store = TimedStore(self.args.history_cap)
        world = InMemoryWorld(config, clock=ManualClock(T0), store=store)
        for topic in self.topics:
            world.broker.create(topic, PARTITIONS)
        append = world.broker.append
        for r in records:
            append(r.topic, r.partition, r.key, r.value, r.headers, r.timestamp)
        runtime = Runtime(
            config,
            self.registry,
            world.ports(),
            metrics=Metrics(CollectorRegistry()),
            health=Health(world.clock.monotonic),
        )
        assert runtime.open()
        return world, runtime, store


def _unread(world: InMemoryWorld, source: Any, topics: Sequence[str]) -> int:
    tps = [(t, p) for t in topics for p in range(world.broker.partitions(t) or 0)]
    return sum(hi - (pos or 0) for lo, hi, pos in source.offsets(tps).values() if hi is not None)


Run = Callable[[], float]  # a stage's timed part; returns CPU seconds not to count


def stage_route(s: Setup) -> Run:
    """The router alone, keyed routing (it does not use the store)."""
    world, runtime, _store = s.world("keyed", s.records)
    router, clock = runtime.router, world.clock

    def run() -> float:
        while True:
            router.poll(0.0)
            clock.advance(s.turn_s)
            if _unread(world, world.router_source, s.topics) == 0:
                break
        router.poll(0.0)  # acknowledgements, the last marks and commits
        s.keyed = world.broker.records(s.config("keyed").keyed_topic_name())
        return 0.0

    return run


def stage_track(s: Setup) -> Run:
    """The tracker over the keyed topic the router wrote."""
    if s.keyed is None:
        stage_route(s)()
    assert s.keyed is not None
    world, runtime, store = s.world("keyed", s.keyed)
    tracker, clock, source = runtime.tracker, world.clock, world.keyed_source
    keyed = [s.config("keyed").keyed_topic_name()]

    def run() -> float:
        while True:
            tracker.poll(0.0)
            clock.advance(s.turn_s)
            if _unread(world, source, keyed) == 0:
                break
        tracker.poll(0.0)  # the last write's reply
        return store.cpu_s

    return run


def stage_total(s: Setup, stop_after: int | None = None) -> Run:
    """The whole runtime turn by turn, direct routing (`stop_after` turns at most)."""
    world, runtime, store = s.world("direct", s.records)
    local, clock = world.local, world.clock
    assert local is not None
    s.last_world = world

    def run() -> float:
        turns = 0
        while True:
            runtime.cycle()
            clock.advance(s.turn_s)
            turns += 1
            if stop_after is not None and turns >= stop_after:
                break
            if _unread(world, world.router_source, s.topics) == 0 and local.unread() == 0:
                break
        runtime.cycle()
        return store.cpu_s

    return run


def timed(stage: Callable[[], Run]) -> float:
    """CPU seconds of a stage's timed part (the machine is shared: wall time would measure
    others), less what it reports as spent in the stand-in for Redis. What was set up before
    (the workload, the in-memory topics) is frozen out of the garbage collector's way, as
    `observer run` freezes what it loaded."""
    run = stage()
    gc.collect()
    gc.freeze()
    try:
        t = time.process_time()
        excluded = run()
        return time.process_time() - t - excluded
    finally:
        gc.unfreeze()


def memory_figures(s: Setup) -> None:
    """Bytes per open instance in the middle of the run (from the in-memory store)."""
    n_batches = max(1, -(-len(s.records) // s.args.batch))
    stage_total(s, stop_after=n_batches // 2)()
    assert s.last_world is not None
    store = s.last_world.store
    open_slots: list[tuple[str, str, bytes, list[bytes]]] = []
    for sid in store.slot_ids():
        flow, key = sid.split(":", 1)
        state, history = store.read(flow, key)
        assert state is not None
        slot = decode_slot(flow, key, state)
        if slot.instance is not None and slot.instance.open:
            open_slots.append((flow, key, state, history))
    state_b = [len(st) for _f, _k, st, _h in open_slots]
    hist_b = [sum(len(e) for e in h) for _f, _k, _st, h in open_slots]
    hist_n = [len(h) for _f, _k, _st, h in open_slots]
    sid_len = [len(f) + 1 + len(k) for f, k, _st, _h in open_slots]
    print(
        f"mid-run: {len(open_slots)} open instances; per instance: state {statistics.mean(state_b):.0f} B "
        f"(median {statistics.median(state_b):.0f}, max {max(state_b)}), history {statistics.mean(hist_b):.0f} B "
        f"in {statistics.mean(hist_n):.1f} entries, slot id {statistics.mean(sid_len):.0f} B "
        f"(payload only; Redis adds per-key overhead)"
    )
    sample = [decode_slot(f, k, st) for f, k, st, _h in open_slots[:2000]]
    t = time.perf_counter()
    for slot in sample:
        encode_slot(slot)
    enc_us = (time.perf_counter() - t) / len(sample) * 1e6
    t = time.perf_counter()
    for f, k, st, _h in open_slots[:2000]:
        decode_slot(f, k, st)
    dec_us = (time.perf_counter() - t) / len(sample) * 1e6
    engine = Engine(s.registry)
    t = time.perf_counter()
    for slot in sample:
        engine.next_due(slot)
    due_us = (time.perf_counter() - t) / len(sample) * 1e6
    print(
        f"encode_slot {enc_us:.2f} µs, decode_slot {dec_us:.2f} µs, next_due {due_us:.2f} µs per open slot"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--flow", type=Path, default=REPO / "flows" / "checkout.yaml")
    ap.add_argument("--orders", type=int, default=20_000)
    ap.add_argument("--span", type=float, default=200.0, help="seconds the order starts span")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--history-cap", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--gc-threshold",
        type=int,
        default=0,
        help="gc.set_threshold(N, 20, 100) and gc.freeze() after setup (0: Python's defaults)",
    )
    ap.add_argument(
        "--profile",
        choices=["decode", "engine", "route", "track", "total"],
        help="run only this stage, once, in a loop for `--profile-seconds` (for py-spy)",
    )
    ap.add_argument("--profile-seconds", type=float, default=20.0)
    ap.add_argument(
        "--stages",
        default="decode,engine,route,track,total",
        help="the stages to time, comma-separated (default: all)",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the mid-run memory figures")
    ap.add_argument(
        "--callgrind",
        choices=["decode", "engine", "route", "track", "total"],
        help="run only this stage, once, through sys.call_tracing (for valgrind --tool=callgrind "
        "--collect-atstart=no --toggle-collect=sys_call_tracing: its instructions only)",
    )
    args = ap.parse_args()

    files, records = build_records(args.orders, args.span, args.seed, args.flow)
    registry = load_registry([files.flow_dir])
    ingest = Ingest(registry)
    decoded = [(r, ingest.decode(r).events) for r in records]
    n_events = sum(len(e) for _, e in decoded)
    setup = Setup(args, registry, records)

    def stage_decode() -> Run:
        def run() -> float:
            dec = ingest.decode
            for r in records:
                dec(r)
            return 0.0

        return run

    def stage_engine() -> Run:
        engine = Engine(registry)

        def run() -> float:
            slots: dict[str, KeySlot] = {}
            apply = engine.apply
            for _, evs in decoded:
                for flow, ev in evs:
                    slot = slots.get(ev.key)
                    if slot is None:
                        slot = slots[ev.key] = KeySlot(flow, ev.key)
                    apply(slot, ev, ev.time)
            return 0.0

        return run

    stages: dict[str, Callable[[], Run]] = {
        "decode": stage_decode,
        "engine": stage_engine,
        "route": lambda: stage_route(setup),
        "track": lambda: stage_track(setup),
        "total": lambda: stage_total(setup),
    }
    stage_route(setup)()  # the keyed topic `track` reads (outside any timing)
    if args.gc_threshold:
        gc.collect()
        gc.freeze()  # the workload built above is not garbage: keep it out of every collection
        gc.set_threshold(args.gc_threshold, 20, 100)
    if args.callgrind:
        run = stages[args.callgrind]()
        gc.collect()
        gc.freeze()
        sys.call_tracing(run, ())
        return
    if args.profile:
        end = time.monotonic() + args.profile_seconds
        while time.monotonic() < end:
            stages[args.profile]()()
        return

    print(
        f"workload: {args.orders} checkout orders, {len(records)} records, {n_events} events, "
        f"batch {args.batch}, history cap {args.history_cap}, {SHARDS} shards, "
        f"gc threshold {args.gc_threshold or 'default'}"
    )
    print("best of runs (CPU time; track and total exclude the in-memory store standing for Redis)")
    for name in args.stages.split(","):
        fn = stages[name]
        rates = [n_events / timed(fn) for _ in range(args.repeat)]
        per = 1e6 / max(rates)
        median = 1e6 / statistics.median(rates)
        print(
            f"{name:<7} {max(rates):>10,.0f} events/s  {per:6.1f} µs/event  "
            f"(median {median:.1f} µs; runs: {', '.join(f'{r:,.0f}' for r in rates)})"
        )
    if not args.no_memory:
        memory_figures(setup)


if __name__ == "__main__":
    main()
