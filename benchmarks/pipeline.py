"""CPU figures of the observer's pure pipeline on a realistic checkout workload (no Kafka, no
Redis): records built by `benchmarks/workload.py` (JSON of ~300 B, UUID keys, 2 % of orders
with a deviation), in event-time order.

Stages, each timed on its own and printed as events/s:
  decode   `Ingest.decode` of every record
  engine   `Engine.apply` of the decoded events on in-memory slots (no timers)
  cycle    what the runtime does per batch of `--batch` records once they are decoded: a
           `Cycle` per batch (slots adopted from a dict standing in for the slot cache, or
           loaded from stored bytes on a miss), `apply`, timers fired at the batch's watermark,
           `finish` (encode, next due, TTL, history, outbox records), and the metric hooks
  total    decode + cycle, one batch at a time

Times are CPU time of the process. Memory: bytes of serialised state, history entries and due member per open instance, in the
middle of the run. Not a test: `python benchmarks/pipeline.py [--orders N] [--profile STAGE]`.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
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
from observer.engine.codec import decode_slot, encode_slot
from observer.engine.core import Engine
from observer.engine.state import Event, KeySlot
from observer.flows.compiler import load_registry
from observer.ingest import Ingest, SourceRecord
from observer.metrics import Metrics
from observer.runtime.batch import Cycle
from observer.runtime.shards import shard_of, slot_id

REPO = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600_000
SHARDS = 16


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
        recs.append(SourceRecord(topic, i % 4, i, key, value, headers, ts))
    return files, recs


class Pipeline:
    """The runtime's per-batch CPU work with in-memory stand-ins for the store and the cache."""

    def __init__(self, registry: Any, batch: int, history_cap: int) -> None:
        self.engine = Engine(registry)
        self.ingest = Ingest(registry)
        self.metrics = Metrics(CollectorRegistry())
        self.batch = batch
        self.history_cap = history_cap
        self.stored: dict[str, bytes] = {}
        self.history: dict[str, list[bytes]] = {}
        self.cache: dict[str, tuple[KeySlot, bytes]] = {}
        self.due: dict[str, int] = {}
        self.heap: list[tuple[int, str]] = []
        self.seq = 0
        self.events = 0
        self.store_s = 0.0  # CPU seconds spent emulating the store (subtracted from figures)

    def _shard(self, sid: str) -> int:
        return shard_of(sid, SHARDS)

    def _write(self, plan: Any) -> None:
        t0 = time.process_time()
        self._store(plan)
        self.store_s += time.process_time() - t0
        self.metrics.record_signals(plan.signals)
        self.metrics.record_latencies(plan.latencies)

    def _store(self, plan: Any) -> None:
        """What Redis and the slot cache do with a plan (the emulation is not timed)."""
        for p in plan.write.puts:
            self.stored[p.sid] = p.state
            if p.history:
                h = self.history.setdefault(p.sid, [])
                h.extend(p.history)
                del h[: -self.history_cap]
            if p.due is None:
                self.due.pop(p.sid, None)
            else:
                self.due[p.sid] = p.due
                heapq.heappush(self.heap, (p.due, p.sid))
        for _, sid in plan.write.deletes:
            self.stored.pop(sid, None)
            self.history.pop(sid, None)
            self.due.pop(sid, None)
        for sid, slot, stored in plan.states:
            if slot is None or stored is None:
                self.cache.pop(sid, None)
            else:
                self.cache[sid] = (slot, stored)

    def run_batch(
        self, decoded: list[tuple[SourceRecord, list[tuple[str, Event]]]], now: int
    ) -> None:
        outcomes: Counter[tuple[str, str]] = Counter()
        c = Cycle(self.engine, self._shard, now, seq=self.seq, history_cap=self.history_cap)
        watermark = 0
        for rec, events in decoded:
            watermark = max(watermark, rec.timestamp)
            outcomes[(rec.topic, "applied" if events else "ignored")] += 1
            for flow, ev in events:
                sid = slot_id(flow, ev.key)
                if not c.loaded(sid):
                    hit = self.cache.get(sid)
                    if hit is not None:
                        c.adopt(sid, self._shard(sid), hit[0], hit[1])
                    else:
                        c.load(sid, flow, ev.key, self._shard(sid), self.stored.get(sid))
                c.apply(sid, ev)
                self.events += 1
        plan = c.finish()
        self.seq = plan.next_seq
        self._write(plan)
        self.metrics.record_events(outcomes)
        self.tick(watermark, now)

    def tick(self, watermark: int, now: int) -> None:
        heap = self.heap
        if not heap or heap[0][0] > watermark:
            return
        c = Cycle(self.engine, self._shard, now, seq=self.seq, history_cap=self.history_cap)
        while heap and heap[0][0] <= watermark:
            due, sid = heapq.heappop(heap)
            if self.due.get(sid) != due or c.loaded(sid):
                continue
            hit = self.cache.get(sid)
            flow, key = sid.split(":", 1)
            if hit is not None:
                c.adopt(sid, self._shard(sid), hit[0], hit[1])
            else:
                c.load(sid, flow, key, self._shard(sid), self.stored.get(sid))
            c.fire(sid, watermark)
        plan = c.finish()
        self.seq = plan.next_seq
        self._write(plan)


def timed(fn: Callable[[], Any]) -> float:
    """CPU seconds of this process (the machine is shared: wall time would measure others),
    less what the stage reports as spent emulating the store."""
    gc.collect()
    t = time.process_time()
    excluded = fn()
    return time.process_time() - t - (excluded or 0.0)


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
        choices=["decode", "engine", "cycle", "total"],
        help="run only this stage, once, in a loop for `--profile-seconds` (for py-spy)",
    )
    ap.add_argument("--profile-seconds", type=float, default=20.0)
    args = ap.parse_args()

    files, records = build_records(args.orders, args.span, args.seed, args.flow)
    registry = load_registry([files.flow_dir])
    ingest = Ingest(registry)
    decoded = [(r, ingest.decode(r).events) for r in records]
    n_events = sum(len(e) for _, e in decoded)
    batches = [decoded[i : i + args.batch] for i in range(0, len(decoded), args.batch)]
    raw_batches = [records[i : i + args.batch] for i in range(0, len(records), args.batch)]

    def stage_decode() -> None:
        dec = ingest.decode
        for r in records:
            dec(r)

    def stage_engine() -> None:
        engine = Engine(registry)
        slots: dict[str, KeySlot] = {}
        apply = engine.apply
        for _, evs in decoded:
            for flow, ev in evs:
                slot = slots.get(ev.key)
                if slot is None:
                    slot = slots[ev.key] = KeySlot(flow, ev.key)
                apply(slot, ev, ev.time)

    def stage_cycle() -> float:
        p = Pipeline(registry, args.batch, args.history_cap)
        for b in batches:
            p.run_batch(b, b[-1][0].timestamp)
        return p.store_s

    def stage_total() -> float:
        p = Pipeline(registry, args.batch, args.history_cap)
        dec = p.ingest.decode
        for rb in raw_batches:
            p.run_batch([(r, dec(r).events) for r in rb], rb[-1].timestamp)
        return p.store_s

    if args.gc_threshold:
        gc.collect()
        gc.freeze()  # the workload built above is not garbage: keep it out of every collection
        gc.set_threshold(args.gc_threshold, 20, 100)
    stages = {
        "decode": stage_decode,
        "engine": stage_engine,
        "cycle": stage_cycle,
        "total": stage_total,
    }
    if args.profile:
        end = time.monotonic() + args.profile_seconds
        while time.monotonic() < end:
            stages[args.profile]()
        return

    print(
        f"workload: {args.orders} checkout orders, {len(records)} records, {n_events} events, "
        f"batch {args.batch}, history cap {args.history_cap}, "
        f"gc threshold {args.gc_threshold or 'default'}"
    )
    print("best of runs (CPU time; cycle and total exclude the store emulation)")
    for name, fn in stages.items():
        rates = [n_events / timed(fn) for _ in range(args.repeat)]
        per = 1e6 / max(rates)
        print(
            f"{name:<7} {max(rates):>10,.0f} events/s  {per:6.1f} µs/event  "
            f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})"
        )

    # memory in the middle of the run: open instances only
    p = Pipeline(registry, args.batch, args.history_cap)
    for b in batches[: len(batches) // 2]:
        p.run_batch(b, b[-1][0].timestamp)
    open_sids = []
    for sid, data in p.stored.items():
        slot = decode_slot(*sid.split(":", 1), data)
        if slot.instance is not None and slot.instance.open:
            open_sids.append(sid)
    state = [len(p.stored[s]) for s in open_sids]
    hist = [sum(len(h) for h in p.history.get(s, [])) for s in open_sids]
    hist_n = [len(p.history.get(s, [])) for s in open_sids]
    sid_len = [len(s) for s in open_sids]
    print(
        f"mid-run: {len(open_sids)} open instances; per instance: state {statistics.mean(state):.0f} B "
        f"(median {statistics.median(state):.0f}, max {max(state)}), history {statistics.mean(hist):.0f} B "
        f"in {statistics.mean(hist_n):.1f} entries, slot id {statistics.mean(sid_len):.0f} B "
        f"(payload only; Redis adds per-key overhead)"
    )
    sample = [decode_slot(*s.split(":", 1), p.stored[s]) for s in open_sids[:2000]]
    t = time.perf_counter()
    for s in sample:
        encode_slot(s)
    enc_us = (time.perf_counter() - t) / len(sample) * 1e6
    raw = [(s.split(":", 1), p.stored[s]) for s in open_sids[:2000]]
    t = time.perf_counter()
    for (f, k), data in raw:
        decode_slot(f, k, data)
    dec_us = (time.perf_counter() - t) / len(raw) * 1e6
    engine = Engine(registry)
    t = time.perf_counter()
    for s in sample:
        engine.next_due(s)
    due_us = (time.perf_counter() - t) / len(sample) * 1e6
    print(
        f"encode_slot {enc_us:.2f} µs, decode_slot {dec_us:.2f} µs, next_due {due_us:.2f} µs per open slot"
    )


if __name__ == "__main__":
    main()
