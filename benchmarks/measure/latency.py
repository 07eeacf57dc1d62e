"""Detection latency: a live producer emits orders in real time, a known fraction never gets
the missing step, and each `missing` alert's broker time is compared with when its deadline
could be known (docs/benchmarks.md, "Detection latency")."""

from __future__ import annotations

import heapq
import math
import random
import subprocess
import threading
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from benchmarks import workload as wl
from benchmarks.common import (
    REPO,
    ProcSampler,
    kafka_conf,
    log,
    now_ms,
    percentile,
    redis_delete_prefix,
)
from benchmarks.harness import Run
from benchmarks.processes import stop_processes, wait_ready
from observer.config import ObserverConfig


@dataclass
class _Acks:
    """Delivery acknowledgements of the live producer: (event time, wall ms when acked)."""

    ts: list[int] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    tps: list[tuple[str, int]] = field(default_factory=list)
    errors: int = 0

    def on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors += 1
            return
        self.ts.append(msg.timestamp()[1])
        self.acked.append(now_ms())
        self.tps.append((msg.topic(), msg.partition()))

    def watermark_passes(
        self, partitions: Sequence[tuple[str, int]], grace_ms: int
    ) -> Callable[[int], int]:
        """When the observer's watermark could pass deadline D, by its own definition: per
        source partition, when a record stamped after D was acknowledged, or, if that came
        later, when every record up to D was and the wall clock reached D + the idle grace
        (a fully read partition counts as the wall clock minus the grace); the latest of these
        over every partition."""
        by_tp: dict[tuple[str, int], list[tuple[int, int]]] = {tp: [] for tp in partitions}
        for t, acked, tp in zip(self.ts, self.acked, self.tps, strict=True):
            by_tp.setdefault(tp, []).append((t, acked))
        series: list[tuple[list[int], list[int], list[int]]] = []
        for pairs in by_tp.values():
            pairs.sort()
            stamps = [p[0] for p in pairs]
            upto: list[int] = []  # running max of ack times, in event-time order
            m = 0
            for _, a in pairs:
                m = max(m, a)
                upto.append(m)
            after: list[int] = [0] * len(pairs)  # min ack time of the records from i on
            low = 2**62
            for i in range(len(pairs) - 1, -1, -1):
                low = min(low, pairs[i][1])
                after[i] = low
            series.append((stamps, upto, after))

        def at(deadline: int) -> int:
            worst = 0
            for ts, upto, after in series:
                i = bisect_right(ts, deadline)
                idle = max(deadline + grace_ms, upto[i - 1] if i else 0)
                newer = after[i] if i < len(ts) else 2**62
                worst = max(worst, min(idle, newer))
            return worst

        return at

    def knowable(self) -> Callable[[int], int]:
        """When the observer could know that deadline D passed: every record with event time
        <= D is in Kafka (acked) and the wall clock has reached D."""
        pairs = sorted(zip(self.ts, self.acked, strict=True))
        ts = [p[0] for p in pairs]
        run_max: list[int] = []
        m = 0
        for _, a in pairs:
            m = max(m, a)
            run_max.append(m)

        def at(deadline: int) -> int:
            i = bisect_right(ts, deadline)
            return max(deadline, run_max[i - 1] if i else 0)

        return at


class _AlertReader(threading.Thread):
    """Reads an alerts topic as alerts arrive: (value, broker append time, receipt wall ms)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer, TopicPartition

        self.c = Consumer(
            kafka_conf(
                bootstrap,
                **{
                    "group.id": "bench-latency",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 5,
                    "fetch.queue.backoff.ms": 1,
                },
            )
        )
        self.c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.got: list[tuple[dict[str, Any], int, int]] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            for m in self.c.consume(100, 0.05):
                if m.error():
                    continue
                self.got.append((orjson.loads(m.value() or b"{}"), m.timestamp()[1], now_ms()))
        self.c.close()


def measure_latency(run: Run) -> dict[str, Any]:
    """A live producer emits orders in real time; a known fraction never gets the missing
    step; each such order's deadline is known, and so is the alert's broker timestamp."""
    args = run.args
    fresh = run.fresh_flow("live", "lat")
    mstep = fresh.model.missing_step
    assert mstep.within_ms is not None
    group = key_prefix = f"{fresh.prefix}-obs"
    env = run.observer_env(fresh.topics)
    run.observer_settings(group, key_prefix, env)
    port = args.http_port_base + 10
    proc = subprocess.Popen(
        run.observer_cmd(fresh.files.flow_dir, group, port, key_prefix),
        stdout=subprocess.DEVNULL,
        stderr=run.logfile("latency-observer"),
        env=env,
        cwd=REPO,
    )
    try:
        if not wait_ready(port, proc):
            raise RuntimeError("the observer did not become ready (see logs/latency-observer.log)")
        time.sleep(2)  # partitions assigned, positions known
        reader = _AlertReader(run.bs, fresh.topics.alerts, args.partitions)
        reader.start()
        acks = _Acks()
        live = _produce_live(run, fresh.model, fresh.enc, acks)
        last = max(live.deadlines.values(), default=now_ms())
        while now_ms() < last + args.settle * 1000 + 1000:
            time.sleep(0.1)
        reader.stop_flag.set()
        reader.join(10)
        sampler = ProcSampler([proc.pid])
        sampler.sample()
    finally:
        codes = stop_processes([proc])
    if not args.keep:
        redis_delete_prefix(args.redis_url, key_prefix)

    grace_ms = ObserverConfig.load({}, env).idle_grace_ms
    sources = [(t, p) for t in fresh.files.source_topics.values() for p in range(args.partitions)]
    m = _Matched.of(reader.got, live.deadlines, mstep.name, acks, sources, grace_ms)
    res = {
        "orders": live.orders,
        "events": live.produced,
        "events_per_s": args.latency_rate * live.produced / max(1, live.orders),
        "missing_step": mstep.name,
        "deadlines": len(live.deadlines),
        "alerts_matched": len(m.found),
        "alerts_lost": len(live.deadlines) - len(m.found),
        "unexpected_alerts": dict(m.unexpected),
        "producer_errors": acks.errors,
        "idle_grace_ms": grace_ms,
        "warmup_s": args.latency_warmup,
        **m.figures(args.latency_warmup),
        **sampler.summary(),
        "exit_codes": codes,
        "observer_env": list(args.observer_env),
        "samples": sorted(m.samples),
    }
    log(
        f"latency: p50 {res['ms_after_watermark']['p50']:.0f} ms, p99 {res['ms_after_watermark']['p99']:.0f} ms after the watermark passed; {len(m.found)}/{len(live.deadlines)} alerts"
    )
    return res


@dataclass
class _Live:
    """What the live producer did: orders, events produced, deadline of each missing order."""

    orders: int
    produced: int
    deadlines: dict[str, int]


def _produce_live(run: Run, model: wl.OrderModel, enc: wl.RecordEncoder, acks: _Acks) -> _Live:
    """`--latency-rate` orders a second for `--latency-seconds`, each event produced when the
    wall clock reaches its event time; `--latency-missing` of them never get the missing step."""
    from confluent_kafka import Producer

    args = run.args
    mstep = model.missing_step
    assert mstep.within_ms is not None
    p = Producer(wl.producer_config(run.bs, live=True))
    rng = random.Random(args.seed)
    deadlines: dict[str, int] = {}
    heap: list[tuple[int, int, str, int, wl.Emit]] = []
    n_orders = int(args.latency_rate * args.latency_seconds)
    t0 = now_ms() + 200
    log(
        f"latency: {n_orders} orders at {args.latency_rate}/s, {args.latency_missing:.0%} never get `{mstep.name}` (window {mstep.within_ms} ms)"
    )
    seq = 0
    produced = 0
    for i in range(n_orders):
        start = t0 + int(i * 1000 / args.latency_rate)
        fault = "missing" if rng.random() < args.latency_missing else None
        key = wl.order_key(args.key_style, args.seed + 1, i)
        emits = model.order(start, fault, rng)
        if fault:
            seen = {e.step: e.at for e in emits}
            deadlines[key] = max((seen[a] for a in mstep.anchors), default=start) + mstep.within_ms
        for n, e in enumerate(emits):
            heapq.heappush(heap, (e.at, seq, key, n, e))
            seq += 1
        # produce everything due before the next order starts
        nxt = t0 + int((i + 1) * 1000 / args.latency_rate)
        produced += _produce_due(p, enc, heap, nxt, acks)
    produced += _produce_due(p, enc, heap, None, acks)
    p.flush(30)
    return _Live(n_orders, produced, deadlines)


def _stats(xs: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(xs, 50),
        "p99": percentile(xs, 99),
        "max": max(xs) if xs else math.nan,
    }


@dataclass
class _Matched:
    """The alerts read, matched with the deadlines of the missing orders: for each, how long
    after the watermark passed, after it was knowable, after the deadline (broker time) and
    after the deadline as received; other alerts are unexpected."""

    vs_watermark: list[float] = field(default_factory=list)
    vs_known: list[float] = field(default_factory=list)
    vs_deadline: list[float] = field(default_factory=list)
    vs_receipt: list[float] = field(default_factory=list)
    found: set[str] = field(default_factory=set)
    samples: list[tuple[int, int, int, int]] = field(default_factory=list)  # D, K, W, alert
    unexpected: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(
        cls,
        got: Sequence[tuple[dict[str, Any], int, int]],
        deadlines: dict[str, int],
        step: str,
        acks: _Acks,
        sources: list[tuple[str, int]],
        grace_ms: int,
    ) -> _Matched:
        knowable = acks.knowable()
        passes = acks.watermark_passes(sources, grace_ms)
        m = cls()
        for v, broker_ts, receipt in got:
            key = str(v.get("key"))
            if (
                v.get("kind") == "missing"
                and v.get("step") == step
                and key in deadlines
                and key not in m.found
            ):
                m.found.add(key)
                d = deadlines[key]
                m.vs_known.append(broker_ts - knowable(d))
                m.vs_watermark.append(broker_ts - passes(d))
                m.samples.append((d, knowable(d), passes(d), broker_ts))
                m.vs_deadline.append(broker_ts - d)
                m.vs_receipt.append(receipt - d)
            else:
                m.unexpected[f"{v.get('kind')}:{v.get('step')}"] += 1
        return m

    def figures(self, warmup_s: float) -> dict[str, Any]:
        return {
            "ms_after_watermark": _stats(self.vs_watermark),
            # the same without the deadlines of the first --latency-warmup seconds: the first
            # alerts of a fresh observer wait for producer metadata and warm-up (both figures
            # are reported)
            "ms_after_watermark_steady": _stats(
                [
                    a - w
                    for d, _k, w, a in self.samples
                    if d >= min(x[0] for x in self.samples) + warmup_s * 1000
                ]
            ),
            "ms_after_knowable": _stats(self.vs_known),
            "ms_after_deadline": _stats(self.vs_deadline),
            "receipt_ms_after_deadline": _stats(self.vs_receipt),
        }


def _produce_due(
    p: Any,
    enc: wl.RecordEncoder,
    heap: list[tuple[int, int, str, int, wl.Emit]],
    until: int | None,
    acks: _Acks,
) -> int:
    """Produce events as their event time comes (all of them when `until` is None)."""
    n = 0
    while heap:
        at = heap[0][0]
        if until is not None and at >= until:
            wait = (until - now_ms()) / 1000
            if wait > 0:
                p.poll(min(wait, 0.005))
                continue
            return n
        wait = (at - now_ms()) / 1000
        if wait > 0:
            p.poll(min(wait, 0.005))
            continue
        _, _, key, i, e = heapq.heappop(heap)
        topic, kb, value, headers, ts = enc.encode(e, key, f"{key}/{i}")
        p.produce(
            topic, value, kb, headers=cast(Any, headers), timestamp=ts, on_delivery=acks.on_delivery
        )
        p.poll(0)
        n += 1
    return n
