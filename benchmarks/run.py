"""The observer's benchmark on the real stack: throughput with 1, 2 and 4 `observer run`
processes, the same check hand-written with faust-streaming and Quix Streams on the same
workload, detection latency with a live producer, and Redis memory per open instance.

    python benchmarks/run.py                          # everything, full size (200k orders)
    python benchmarks/run.py --orders 5000 --only observer,quix --processes 1,2

Needs Kafka on --bootstrap-servers and Redis on --redis-url (`ops/stack start`). The peers
need `pip install -e '.[bench]'` (see docs/benchmarks.md: a separate venv, benchmarks/.venv,
is used by default when it exists, because quixstreams pins older confluent-kafka/pydantic).
Prints a table and writes every figure to benchmarks/results/<timestamp>.json; process logs
and the workload files go to benchmarks/results/<timestamp>/. docs/benchmarks.md says what
each figure means and how it is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import http.server
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import workload as wl
from benchmarks.common import (
    REPO,
    CommitWatch,
    ProcSampler,
    create_topics,
    delete_groups,
    delete_topics,
    end_offsets,
    fmt_rate,
    kafka_conf,
    log,
    now_ms,
    percentile,
    redis_delete_prefix,
    topics_matching,
)

PARTS = ("observer", "faust", "quix", "latency", "memory")
TARGETS = {
    "observer_events_per_s": 150_000,
    "vs_faust": 10.0,
    "vs_quix": 2.0,
    "latency_p99_ms": 100.0,
    "redis_bytes_per_open_instance": 250,
    "scaling_within": 0.20,
}


# -- helpers ------------------------------------------------------------------------------------


def _default_python(candidates: Sequence[Path]) -> str:
    for c in candidates:
        if c.exists():
            return str(c)
    return sys.executable


class _Sink(http.server.BaseHTTPRequestHandler):
    """Accepts webhook POSTs (the flow's `page_oncall`) and counts them."""

    count = 0

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        type(self).count += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def webhook_sink(port: int) -> Iterator[type[_Sink]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Sink)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield _Sink
    finally:
        server.shutdown()
        server.server_close()


def count_records(
    bootstrap: str, topic: str, decode: Callable[[bytes], Any] = orjson.loads
) -> list[tuple[Any, int, int]]:
    """Every record of a topic now: (decoded value, broker/record timestamp, partition)."""
    from confluent_kafka import Consumer, TopicPartition

    ends = end_offsets(bootstrap, [topic])
    todo = {tp: hi for tp, (lo, hi) in ends.items() if hi > lo}
    out: list[tuple[Any, int, int]] = []
    if not todo:
        return out
    c = Consumer(kafka_conf(bootstrap, **{"group.id": "bench-reader", "enable.auto.commit": False}))
    c.assign([TopicPartition(t, p, ends[(t, p)][0]) for (t, p) in todo])
    deadline = time.monotonic() + 60
    while todo and time.monotonic() < deadline:
        for m in c.consume(1000, 1.0):
            if m.error():
                continue
            tp = (str(m.topic()), int(m.partition() or 0))
            out.append((decode(m.value() or b"null"), m.timestamp()[1], tp[1]))
            if tp in todo and int(m.offset() or 0) + 1 >= todo[tp]:
                del todo[tp]
    c.close()
    return out


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def redis_used_memory(url: str) -> int:
    r = redis_client(url)
    try:
        return int(r.info("memory")["used_memory"])
    finally:
        r.close()


def scrape_metrics(port: int) -> dict[str, float]:
    """Sums of the observer's counters and gauges by metric name (labels summed)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("observer_") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            sums[base] = sums.get(base, 0.0) + float(value)
    return sums


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def stop_processes(
    procs: Sequence[subprocess.Popen[bytes]], timeout_s: float = 30
) -> list[int | None]:
    """SIGTERM each (by pid), wait, SIGKILL what is left; their exit codes."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    return [p.returncode for p in procs]


@dataclass
class Run:
    """One benchmark run: settings, where things go, what was measured."""

    args: argparse.Namespace
    stamp: str
    out: Path
    results: dict[str, Any] = field(default_factory=dict)
    topics_made: set[str] = field(default_factory=set)
    groups_made: set[str] = field(default_factory=set)
    prefixes_made: list[str] = field(default_factory=list)

    @property
    def bs(self) -> str:
        return str(self.args.bootstrap_servers)

    def logfile(self, name: str) -> Any:
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        return (self.out / "logs" / f"{name}.log").open("wb")

    def observer_cmd(self, flow_dir: Path, group: str, port: int, key_prefix: str) -> list[str]:
        return [
            self.args.observer_python,
            "-m",
            "observer.cli",
            "run",
            str(flow_dir),
            "--bootstrap-servers",
            self.bs,
            "--redis-url",
            self.args.redis_url,
            "--group-id",
            group,
            "--http-port",
            str(port),
            "--key-prefix",
            key_prefix,
            "--log-level",
            self.args.observer_log_level,
        ]

    def observer_env(self, topics: Any) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            OBSERVER_ALERTS_TOPIC=topics.alerts,
            OBSERVER_OUTCOMES_TOPIC=topics.outcomes,
            OBSERVER_DLQ_TOPIC=topics.dlq,
        )
        for kv in self.args.observer_env:
            k, _, v = kv.partition("=")
            env[k] = v
        return env

    def make_runtime_topics(self, topics: Any) -> None:
        # alerts carry the broker's append time: that is when an alert was acknowledged
        create_topics(
            self.bs,
            [topics.alerts],
            self.args.partitions,
            {"message.timestamp.type": "LogAppendTime"},
        )
        create_topics(self.bs, [topics.outcomes, topics.dlq], self.args.partitions)
        self.topics_made.update([topics.alerts, topics.outcomes, topics.dlq])


# -- throughput ---------------------------------------------------------------------------------


def watch_until_done(
    run: Run,
    watch: CommitWatch,
    procs: Sequence[subprocess.Popen[bytes]],
    sampler: ProcSampler,
) -> str:
    """Sample commits (every 0.1 s) and processes (every 0.5 s) until every record is
    committed, a process dies, or the timeout. Returns why it stopped."""
    t_end = time.monotonic() + run.args.timeout
    next_proc = 0.0
    last_log = time.monotonic()
    while True:
        n = watch.sample()
        now = time.monotonic()
        if now >= next_proc or (n > 0 and sampler.cpu_at_first is None):
            sampler.sample()
            next_proc = now + 0.5
            if n > 0 and sampler.cpu_at_first is None:
                sampler.cpu_at_first = sum(sampler.cpu_s.values())
        if n >= watch.total:
            sampler.sample()
            sampler.cpu_at_done = sum(sampler.cpu_s.values())
            return "complete"
        if any(p.poll() is not None for p in procs):
            return "a process exited"
        if now > t_end:
            return "timeout"
        if now - last_log > 10:
            log(f"  {n:,}/{watch.total:,} committed")
            last_log = now
        time.sleep(0.1)


def summarise_alerts(records: list[tuple[Any, int, int]]) -> dict[str, int]:
    c: Counter[str] = Counter()
    for v, _, _ in records:
        if isinstance(v, dict):
            c[str(v.get("kind"))] += 1
    return dict(sorted(c.items()))


def check_alerts(got: dict[str, int], expected: dict[str, Any]) -> dict[str, Any]:
    """Per kind: expected range (from replay templates) vs got."""
    lo, hi = expected["alerts_min"], expected["alerts_max"]
    kinds = sorted(set(lo) | set(hi) | set(got))
    bad = {
        k: [lo.get(k, 0), hi.get(k, 0), got.get(k, 0)]
        for k in kinds
        if not lo.get(k, 0) <= got.get(k, 0) <= hi.get(k, 0)
    }
    return {"ok": not bad, "out_of_range": bad}


def measure_observer(
    run: Run, manifest: dict[str, Any], expected: dict[str, Any], n: int
) -> dict[str, Any]:
    args = run.args
    prefix = manifest["prefix"]
    label = f"obs{n}"
    group = key_prefix = f"{prefix}-{label}"
    files_topics = wl.runtime_topics(prefix, label)
    run.make_runtime_topics(files_topics)
    ends = end_offsets(run.bs, manifest["source_topics"].values())
    watch = CommitWatch(run.bs, group, ends)
    run.groups_made.add(group)
    mem_before = redis_used_memory(args.redis_url)
    log(f"observer x{n}: {watch.total:,} events, group {group}")
    procs = []
    ports = [args.http_port_base + i for i in range(n)]
    t_launch = time.monotonic()
    for i, port in enumerate(ports):
        cmd = run.observer_cmd(Path(manifest["flow_dir"]), group, port, key_prefix)
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=run.logfile(f"{label}-{i}"),
                env=run.observer_env(files_topics),
                cwd=REPO,
            )
        )
    sampler = ProcSampler([p.pid for p in procs])
    why = watch_until_done(run, watch, procs, sampler)
    rate = watch.rate()
    first = next((t for t, c in watch.samples if c > 0), None)
    time.sleep(args.settle)  # the deadline tail: the watermark reaches the wall clock
    sampler.sample()
    metrics = [scrape_metrics(p) for p in ports]
    codes = stop_processes(procs)
    mem_after = redis_used_memory(args.redis_url)
    alerts = summarise_alerts(count_records(run.bs, files_topics.alerts))
    outcomes: Counter[str] = Counter()
    for v, _, _ in count_records(run.bs, files_topics.outcomes):
        outcomes[str(v.get("outcome"))] += 1
    res = {
        "processes": n,
        "group": group,
        "stopped": why,
        **rate,
        "startup_s": (first - t_launch) if first is not None else None,
        **sampler.summary(),
        "exit_codes": codes,
        "alerts": alerts,
        "alerts_check": check_alerts(alerts, expected),
        "outcomes": dict(sorted(outcomes.items())),
        "outcomes_expected_at_least": expected["outcomes_certain"],
        "redis_used_memory_delta": mem_after - mem_before,
        "metrics": _merge_metrics(metrics),
    }
    res["events_per_cpu_s"] = _per_cpu(rate, sampler)
    if not args.keep:
        redis_delete_prefix(args.redis_url, key_prefix)
    log(f"observer x{n}: {fmt_rate(res['events_per_s'])} events/s ({why}), alerts {alerts}")
    return res


def _merge_metrics(ms: list[dict[str, float]]) -> dict[str, float]:
    keep = (
        "observer_events_total",
        "observer_instances_started_total",
        "observer_instances_ended_total",
        "observer_deviations_total",
        "observer_published_total",
        "observer_dead_letters_total",
        "observer_processing_errors_total",
        "observer_publish_failures_total",
        "observer_store_errors_total",
        "observer_batch_duration_seconds_sum",
        "observer_batch_duration_seconds_count",
    )
    out: dict[str, float] = {}
    for m in ms:
        for k in keep:
            if k in m:
                out[k] = out.get(k, 0.0) + m[k]
    return out


def _per_cpu(rate: dict[str, Any], sampler: ProcSampler) -> float | None:
    """Events per CPU second of the measured processes, from the first commit on (startup
    and the settle time after the last commit are left out)."""
    if sampler.cpu_at_first is None or sampler.cpu_at_done is None:
        return None
    cpu = sampler.cpu_at_done - sampler.cpu_at_first
    return rate["events"] / cpu if cpu > 0 else None


def measure_peer(
    run: Run, manifest: dict[str, Any], expected: dict[str, Any], kind: str
) -> dict[str, Any]:
    args = run.args
    prefix = manifest["prefix"]
    group = f"{prefix}-{kind}"
    alerts_topic = f"{prefix}.{kind}.alerts"
    create_topics(run.bs, [alerts_topic], args.partitions)
    run.topics_made.add(alerts_topic)
    ends = end_offsets(run.bs, manifest["source_topics"].values())
    watch = CommitWatch(run.bs, group, ends)
    run.groups_made.add(group)
    state = run.out / f"{kind}-state"
    script = REPO / "benchmarks" / "peers" / f"{kind}_peer.py"
    cmd = [
        args.peer_python,
        str(script),
        "--spec",
        str(Path(manifest["out"]) / "peer-spec.json"),
        "--group",
        group,
        "--alerts-topic",
        alerts_topic,
        "--bootstrap-servers",
        run.bs,
    ]
    cmd += ["--data-dir" if kind == "faust" else "--state-dir", str(state)]
    log(f"{kind}: {watch.total:,} events, group {group}")
    t_launch = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=run.logfile(kind), cwd=REPO)
    sampler = ProcSampler([proc.pid])
    why = watch_until_done(run, watch, [proc], sampler)
    rate = watch.rate()
    first = next((t for t, c in watch.samples if c > 0), None)
    time.sleep(min(args.settle, 3))
    sampler.sample()
    codes = stop_processes([proc])
    alerts = summarise_alerts(count_records(run.bs, alerts_topic))
    shutil.rmtree(state, ignore_errors=True)
    res = {
        "processes": 1,
        "group": group,
        "stopped": why,
        **rate,
        "startup_s": (first - t_launch) if first is not None else None,
        **sampler.summary(),
        "exit_codes": codes,
        "alerts": alerts,
        "note": "peers model missing/late/error of the main path only (see benchmarks/peers/checkout.py)",
    }
    res["events_per_cpu_s"] = _per_cpu(rate, sampler)
    log(f"{kind}: {fmt_rate(res['events_per_s'])} events/s ({why}), alerts {alerts}")
    return res


# -- latency ------------------------------------------------------------------------------------


@dataclass
class _Acks:
    """Delivery acknowledgements of the live producer: (event time, wall ms when acked)."""

    ts: list[int] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    errors: int = 0

    def on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors += 1
            return
        self.ts.append(msg.timestamp()[1])
        self.acked.append(now_ms())

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
    from confluent_kafka import Producer

    args = run.args
    prefix = f"{run.args.prefix}-live"
    files = wl.prepare_flow(Path(args.flow), prefix, run.out / "live", args.webhook_sink)
    run.prefixes_made.append(prefix)
    create_topics(run.bs, files.source_topics.values(), args.partitions)
    create_topics(run.bs, files.action_topics, args.partitions)
    run.topics_made.update([*files.source_topics.values(), *files.action_topics])
    topics = files.runtime_topics("lat")
    run.make_runtime_topics(topics)
    model = wl.OrderModel.build(files.flow, args.missing_step, args.late_step)
    enc = wl.RecordEncoder(files, args.event_bytes, args.time_format)
    mstep = model.missing_step
    assert mstep.within_ms is not None

    group = key_prefix = f"{prefix}-obs"
    run.groups_made.add(group)
    port = args.http_port_base + 10
    proc = subprocess.Popen(
        run.observer_cmd(files.flow_dir, group, port, key_prefix),
        stdout=subprocess.DEVNULL,
        stderr=run.logfile("latency-observer"),
        env=run.observer_env(topics),
        cwd=REPO,
    )
    try:
        if not wait_ready(port, proc):
            raise RuntimeError("the observer did not become ready (see logs/latency-observer.log)")
        time.sleep(2)  # partitions assigned, positions known
        reader = _AlertReader(run.bs, topics.alerts, args.partitions)
        reader.start()
        acks = _Acks()
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
                deadlines[key] = (
                    max((seen[a] for a in mstep.anchors), default=start) + mstep.within_ms
                )
            for n, e in enumerate(emits):
                heapq.heappush(heap, (e.at, seq, key, n, e))
                seq += 1
            # produce everything due before the next order starts
            nxt = t0 + int((i + 1) * 1000 / args.latency_rate)
            produced += _produce_due(p, enc, heap, nxt, acks)
        produced += _produce_due(p, enc, heap, None, acks)
        p.flush(30)
        last = max(deadlines.values(), default=now_ms())
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

    knowable = acks.knowable()
    vs_known: list[float] = []
    vs_deadline: list[float] = []
    vs_receipt: list[float] = []
    found: set[str] = set()
    unexpected: Counter[str] = Counter()
    for v, broker_ts, receipt in reader.got:
        key = str(v.get("key"))
        if (
            v.get("kind") == "missing"
            and v.get("step") == mstep.name
            and key in deadlines
            and key not in found
        ):
            found.add(key)
            d = deadlines[key]
            vs_known.append(broker_ts - knowable(d))
            vs_deadline.append(broker_ts - d)
            vs_receipt.append(receipt - d)
        else:
            unexpected[f"{v.get('kind')}:{v.get('step')}"] += 1

    def stats(xs: list[float]) -> dict[str, float]:
        return {
            "p50": percentile(xs, 50),
            "p99": percentile(xs, 99),
            "max": max(xs) if xs else math.nan,
        }

    res = {
        "orders": n_orders,
        "events": produced,
        "events_per_s": args.latency_rate * produced / max(1, n_orders),
        "missing_step": mstep.name,
        "deadlines": len(deadlines),
        "alerts_matched": len(found),
        "alerts_lost": len(deadlines) - len(found),
        "unexpected_alerts": dict(unexpected),
        "producer_errors": acks.errors,
        "ms_after_knowable": stats(vs_known),
        "ms_after_deadline": stats(vs_deadline),
        "receipt_ms_after_deadline": stats(vs_receipt),
        **sampler.summary(),
        "exit_codes": codes,
        "observer_env": list(args.observer_env),
    }
    log(
        f"latency: p50 {res['ms_after_knowable']['p50']:.0f} ms, p99 {res['ms_after_knowable']['p99']:.0f} ms after the watermark could pass; {len(found)}/{len(deadlines)} alerts"
    )
    return res


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


# -- memory -------------------------------------------------------------------------------------


def measure_memory(run: Run) -> dict[str, Any]:
    """N orders stopped mid-flight (the first half of the main path), their event times
    `--memory-future-s` ahead of the wall clock so no deadline fires while we look; then
    Redis MEMORY USAGE of the observer's keys and INFO used_memory, per open instance."""
    args = run.args
    prefix = f"{args.prefix}-mem"
    files = wl.prepare_flow(Path(args.flow), prefix, run.out / "mem", args.webhook_sink)
    run.prefixes_made.append(prefix)
    create_topics(run.bs, files.source_topics.values(), args.partitions)
    create_topics(run.bs, files.action_topics, args.partitions)
    run.topics_made.update([*files.source_topics.values(), *files.action_topics])
    topics = files.runtime_topics("mem")
    run.make_runtime_topics(topics)
    model = wl.OrderModel.build(files.flow, args.missing_step, args.late_step)
    enc = wl.RecordEncoder(files, args.event_bytes, args.time_format)
    main = files.flow.paths[0].steps
    first_half = set(main[: max(1, len(main) // 2)])
    n = args.memory_orders
    rng = random.Random(args.seed)
    base = now_ms() + int(args.memory_future_s * 1000)

    def records() -> Iterator[tuple[str, bytes, bytes, list[tuple[str, bytes]], int]]:
        for i in range(n):
            key = wl.order_key(args.key_style, args.seed + 2, i)
            emits = sorted(
                (e for e in model.order(base + i, None, rng) if e.step in first_half),
                key=lambda e: e.at,
            )
            for j, e in enumerate(emits):
                topic, kb, value, headers, _ts = enc.encode(e, key, f"{key}/{j}")
                yield topic, kb, value, headers, 0  # record time: now (the event time is ahead)

    produced = wl.produce_records(run.bs, records())
    log(
        f"memory: {n:,} orders mid-flight ({produced:,} events, steps {sorted(files.flow.steps[i].name for i in first_half)})"
    )
    group = key_prefix = f"{prefix}-obs"
    ends = end_offsets(run.bs, files.source_topics.values())
    watch = CommitWatch(run.bs, group, ends)
    run.groups_made.add(group)
    mem_before = redis_used_memory(args.redis_url)
    port = args.http_port_base + 20
    proc = subprocess.Popen(
        run.observer_cmd(files.flow_dir, group, port, key_prefix),
        stdout=subprocess.DEVNULL,
        stderr=run.logfile("memory-observer"),
        env=run.observer_env(topics),
        cwd=REPO,
    )
    sampler = ProcSampler([proc.pid])
    try:
        why = watch_until_done(run, watch, [proc], sampler)
        time.sleep(args.settle)
        sampler.sample()
        metrics = scrape_metrics(port)
        mem_after = redis_used_memory(args.redis_url)
        usage = redis_key_usage(args.redis_url, key_prefix, args.memory_sample)
    finally:
        codes = stop_processes([proc])
    open_n = usage["open_instances"] or metrics.get("observer_open_instances") or 0
    res = {
        "orders": n,
        "events": produced,
        "stopped": why,
        "open_instances": open_n,
        "bytes_per_open_instance": usage["total_bytes"] / open_n if open_n else None,
        "bytes_per_open_instance_by_kind": {
            k: v / open_n for k, v in usage["bytes_by_kind"].items()
        }
        if open_n
        else {},
        "used_memory_delta": mem_after - mem_before,
        "used_memory_delta_per_open_instance": (mem_after - mem_before) / open_n
        if open_n
        else None,
        "keys_by_kind": usage["keys_by_kind"],
        "sampled_keys": usage["sampled"],
        "key_style": args.key_style,
        **sampler.summary(),
        "rss_mb_per_1k_open": (sampler.summary()["rss_mb"][0] / (open_n / 1000))
        if open_n
        else None,
        "exit_codes": codes,
    }
    if not args.keep:
        redis_delete_prefix(args.redis_url, key_prefix)
    log(
        f"memory: {open_n:,} open, {res['bytes_per_open_instance'] or 0:.0f} B per open instance (MEMORY USAGE), RSS {res['rss_mb']} MB"
    )
    return res


def redis_key_usage(url: str, prefix: str, sample: int) -> dict[str, Any]:
    """MEMORY USAGE of the observer's keys by kind (slot, hist, due, ...): big keys (sets,
    hashes) measured whole, per-instance keys sampled and extrapolated."""
    r = redis_client(url)
    try:
        keys_by_kind: Counter[str] = Counter()
        per_kind_sample: dict[str, list[bytes]] = {}
        singles: dict[str, list[bytes]] = {}
        for k in r.scan_iter(match=f"{prefix}:*", count=5000):
            rest = k.decode()[len(prefix) + 1 :]
            parts = rest.split(":")
            kind = parts[1] if rest.startswith("{") and len(parts) > 1 else parts[0]
            keys_by_kind[kind] += 1
            if kind in ("slot", "hist"):
                lst = per_kind_sample.setdefault(kind, [])
                if len(lst) < sample:
                    lst.append(k)
            else:
                singles.setdefault(kind, []).append(k)
        bytes_by_kind: dict[str, float] = {}
        for kind, ks in per_kind_sample.items():
            pipe = r.pipeline(transaction=False)
            for k in ks:
                pipe.memory_usage(k, samples=0)
            sizes = [s or 0 for s in pipe.execute()]
            bytes_by_kind[kind] = sum(sizes) / len(sizes) * keys_by_kind[kind] if sizes else 0.0
        for kind, ks in singles.items():
            bytes_by_kind[kind] = float(sum(r.memory_usage(k, samples=0) or 0 for k in ks))
        stats = r.hgetall(f"{prefix}:stats")
        open_n = sum(int(v) for f, v in stats.items() if f.startswith(b"open:"))
        return {
            "keys_by_kind": dict(keys_by_kind),
            "bytes_by_kind": bytes_by_kind,
            "total_bytes": sum(bytes_by_kind.values()),
            "sampled": {k: len(v) for k, v in per_kind_sample.items()},
            "open_instances": open_n,
        }
    finally:
        r.close()


# -- report -------------------------------------------------------------------------------------


def _ok(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "NO")


def report(res: dict[str, Any]) -> str:
    lines = []
    wlm = res.get("workload")
    if wlm:
        lines.append(
            f"workload: {wlm['orders']:,} orders, {wlm['events']:,} events ({wlm['events_per_order']:.1f}/order), {wlm['partitions']} partitions x {len(wlm['source_topics'])} topics, produced at {fmt_rate(wlm.get('produce_events_per_s'))} events/s"
        )
    rows = []
    obs = res.get("observer", {})
    base = obs.get("1", {}).get("events_per_s")
    for n, r in sorted(obs.items(), key=lambda kv: int(kv[0])):
        scale = r["events_per_s"] / base if base and r.get("events_per_s") else None
        rows.append((f"observer x{n}", r, f"x{scale:.2f} of 1 proc" if scale else ""))
    for kind in ("faust", "quix"):
        r = res.get(kind)
        if r:
            ratio = base / r["events_per_s"] if base and r.get("events_per_s") else None
            base_cpu = obs.get("1", {}).get("events_per_cpu_s")
            cpu_ratio = (
                base_cpu / r["events_per_cpu_s"] if base_cpu and r.get("events_per_cpu_s") else None
            )
            note = f"ours/{kind} = {ratio:.1f}x" if ratio else ""
            if cpu_ratio:
                note += f" ({cpu_ratio:.1f}x per CPU s)"
            rows.append((kind, r, note))
    if rows:
        lines.append("")
        lines.append(
            f"{'throughput':<14}{'events/s':>11}{'events':>11}{'seconds':>9}{'cpu s':>8}{'ev/cpu-s':>10}{'peak RSS MB':>13}  {'alerts by kind':<44} note"
        )
        for name, r, note in rows:
            secs = r.get("seconds")
            lines.append(
                f"{name:<14}{fmt_rate(r.get('events_per_s')):>11}{r.get('events', 0):>11,}{(secs or 0):>9.2f}{sum(r.get('cpu_s', [])):>8.1f}{fmt_rate(r.get('events_per_cpu_s')):>10}{max(r.get('peak_rss_mb', [0])):>13.0f}  {json.dumps(r.get('alerts', {})):<44} {note}{'' if r.get('complete') else ' (INCOMPLETE: ' + str(r.get('stopped')) + ')'}"
            )
        checks = [r.get("alerts_check") for _, r, _ in rows if r.get("alerts_check")]
        if checks:
            bad = [c["out_of_range"] for c in checks if not c["ok"]]
            lines.append(
                f"observer alerts within the replay's expected range: {_ok(not bad)}"
                + (f" {bad}" if bad else "")
            )
    lat = res.get("latency")
    if lat:
        k, d = lat["ms_after_knowable"], lat["ms_after_deadline"]
        lines.append("")
        lines.append(
            f"detection latency ({lat['deadlines']} deadlines of `{lat['missing_step']}`, live at {lat['events_per_s']:.0f} events/s):"
        )
        lines.append(
            f"  alert broker time - when the watermark could pass: p50 {k['p50']:.0f} ms, p99 {k['p99']:.0f} ms, max {k['max']:.0f} ms"
        )
        lines.append(
            f"  alert broker time - deadline:                      p50 {d['p50']:.0f} ms, p99 {d['p99']:.0f} ms, max {d['max']:.0f} ms"
        )
        lines.append(
            f"  alerts matched {lat['alerts_matched']}/{lat['deadlines']}, unexpected {lat['unexpected_alerts'] or 0}"
        )
    mem = res.get("memory")
    if mem:
        lines.append("")
        b = mem.get("bytes_per_open_instance")
        lines.append(
            f"memory ({mem['open_instances']:,} open instances, {mem['key_style']} keys): Redis {b or 0:.0f} B per open instance by MEMORY USAGE {json.dumps({k: round(v) for k, v in mem['bytes_per_open_instance_by_kind'].items()})}, used_memory delta {mem['used_memory_delta_per_open_instance'] or 0:.0f} B/instance; observer RSS {mem['rss_mb'][0]} MB"
        )
    t = res.get("targets")
    if t:
        lines.append("")
        lines.append("targets: " + ", ".join(f"{k} {_ok(v)}" for k, v in t.items()))
    return "\n".join(lines)


def targets(res: dict[str, Any]) -> dict[str, bool | None]:
    obs = res.get("observer", {})
    one = obs.get("1", {}).get("events_per_s")
    out: dict[str, bool | None] = {}
    out[">=150k/s 1 proc"] = one >= TARGETS["observer_events_per_s"] if one else None
    for kind, need in (("faust", TARGETS["vs_faust"]), ("quix", TARGETS["vs_quix"])):
        theirs = res.get(kind, {}).get("events_per_s")
        out[f">={need:.0f}x {kind}"] = one / theirs >= need if one and theirs else None
    for n in ("2", "4"):
        r = obs.get(n, {}).get("events_per_s")
        out[f"{n} procs within 20% of linear"] = (
            r >= int(n) * one * (1 - TARGETS["scaling_within"]) if r and one else None
        )
    lat = res.get("latency", {}).get("ms_after_knowable", {}).get("p99")
    out["p99 <=100 ms"] = (
        lat <= TARGETS["latency_p99_ms"] if lat is not None and not math.isnan(lat) else None
    )
    b = res.get("memory", {}).get("bytes_per_open_instance")
    out["<=250 B/open instance"] = b <= TARGETS["redis_bytes_per_open_instance"] if b else None
    return out


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    wl.add_arguments(ap)
    ap.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"parts to run, comma-separated: {', '.join(PARTS)} (default: all)",
    )
    ap.add_argument(
        "--processes", default="1,2,4", help="observer process counts (default: %(default)s)"
    )
    ap.add_argument(
        "--workload",
        default=None,
        help="reuse a produced workload (its folder, with workload.json)",
    )
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument(
        "--http-port-base", type=int, default=18100, help="observer ops API ports start here"
    )
    ap.add_argument(
        "--observer-python", default=_default_python([REPO / ".venv" / "bin" / "python"])
    )
    ap.add_argument(
        "--peer-python",
        default=_default_python(
            [REPO / "benchmarks" / ".venv" / "bin" / "python", REPO / ".venv" / "bin" / "python"]
        ),
    )
    ap.add_argument(
        "--observer-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for observer processes (e.g. OBSERVER_IDLE_GRACE_MS=50)",
    )
    ap.add_argument("--observer-log-level", default="WARNING")
    ap.add_argument(
        "--timeout",
        type=float,
        default=1800,
        help="seconds per throughput measurement (a slower peer is reported from its progress)",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds to wait after the last commit (deadline tail)",
    )
    ap.add_argument("--latency-rate", type=float, default=200, help="live orders per second")
    ap.add_argument("--latency-seconds", type=float, default=30)
    ap.add_argument(
        "--latency-missing",
        type=float,
        default=0.1,
        help="fraction of live orders that never get the missing step",
    )
    ap.add_argument("--memory-orders", type=int, default=200_000)
    ap.add_argument(
        "--memory-future-s",
        type=float,
        default=1800,
        help="event times this far ahead keep the instances open",
    )
    ap.add_argument(
        "--memory-sample", type=int, default=2000, help="keys per kind measured with MEMORY USAGE"
    )
    ap.add_argument("--keep", action="store_true", help="keep topics and Redis keys")
    args = ap.parse_args(argv)
    args.parts = [p for p in args.only.split(",") if p]
    for p in args.parts:
        if p not in PARTS:
            ap.error(f"--only: unknown part {p!r}")
    args.process_counts = [int(x) for x in args.processes.split(",") if x]
    if not args.prefix:
        args.prefix = wl.default_prefix()
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = REPO / "benchmarks" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    run = Run(args, stamp, out)
    res = run.results
    res.update(
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        argv=sys.argv[1:],
        machine={"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        observer_python=args.observer_python,
        peer_python=args.peer_python,
    )
    sink_port = int(args.webhook_sink.rsplit(":", 1)[1].split("/")[0])
    with webhook_sink(sink_port) as sink:
        try:
            if any(p in args.parts for p in ("observer", "faust", "quix")):
                if args.workload:
                    wdir = Path(args.workload)
                    manifest = json.loads((wdir / "workload.json").read_text())
                    manifest["out"] = str(wdir)
                else:
                    args.out = str(out / "workload")
                    manifest = wl.build_workload(args)
                    run.prefixes_made.append(manifest["prefix"])
                    run.topics_made.update(
                        [*manifest["source_topics"].values(), *manifest["action_topics"]]
                    )
                expected = json.loads((Path(manifest["out"]) / "expected.json").read_text())
                res["workload"] = manifest
                res["expected"] = {
                    k: expected[k]
                    for k in (
                        "alerts_min",
                        "alerts_max",
                        "outcomes_certain",
                        "orders_by_kind",
                        "fault_steps",
                        "sample_check",
                    )
                }
                if "observer" in args.parts:
                    res["observer"] = {
                        str(n): measure_observer(run, manifest, expected, n)
                        for n in args.process_counts
                    }
                for kind in ("faust", "quix"):
                    if kind in args.parts:
                        res[kind] = measure_peer(run, manifest, expected, kind)
            if "latency" in args.parts:
                res["latency"] = measure_latency(run)
            if "memory" in args.parts:
                res["memory"] = measure_memory(run)
        finally:
            res["webhooks_received"] = sink.count
            res["targets"] = targets(res)
            res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            path = REPO / "benchmarks" / "results" / f"{stamp}.json"
            path.write_text(json.dumps(res, indent=2, default=str) + "\n")
            if not args.keep:
                names = set(run.topics_made)
                for p in run.prefixes_made:
                    names.update(topics_matching(run.bs, p))
                n = delete_topics(run.bs, names)
                g = delete_groups(run.bs, run.groups_made)
                log(f"deleted {n} topics and {g} consumer groups (use --keep to keep them)")
    print(report(res))
    print(f"\nfigures: {path}")


if __name__ == "__main__":
    main()
