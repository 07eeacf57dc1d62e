"""The observer's benchmark on the real stack: throughput with 1, 2 and 4 `observer run`
processes (and one with `OBSERVER_ROUTING=direct`), the same check hand-written with faust-streaming and Quix Streams on the same
workload, detection latency with a live producer, and Redis memory per open instance.

    python benchmarks/run.py                          # everything, full size (200k orders)
    python benchmarks/run.py --orders 5000 --only observer,quix --processes 1,2

Needs Kafka on --bootstrap-servers and Redis on --redis-url (`ops/stack start`). The peers
need `pip install -e '.[bench]'` (see docs/benchmarks.md: a separate venv, benchmarks/.venv,
is used by default when it exists, because quixstreams pins older confluent-kafka/pydantic).
Prints a table and writes every figure to benchmarks/results/<timestamp>.json; process logs
and the workload files go to benchmarks/results/<timestamp>/. docs/benchmarks.md says what
each figure means and how it is measured.

The observer's throughput runs until its state is durable: its source group `<group>` has
committed every record AND its tracker's group `<group>.keyed` has committed the keyed topic
`<group>.observer-keyed` up to where it ended when routing finished (those commits come
OBSERVER_COMMIT_DELAY_MS, default 2 s, after the Redis write; the delay is included and shown
as `tail s`). At the end the run's topics (keyed topics included), consumer groups (both of
each measurement) and Redis keys are deleted unless --keep.
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
from typing import Any, Protocol, cast

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import KafkaException

from benchmarks import workload as wl
from benchmarks.common import (
    REPO,
    CommitWatch,
    DurableWatch,
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
from observer.config import ObserverConfig

PARTS = ("observer", "direct", "faust", "quix", "latency", "memory")
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


@dataclass
class Record:
    """A record read back from a topic: decoded value, timestamp, partition, headers."""

    value: Any
    ts: int
    partition: int
    headers: dict[str, bytes]


def _headers(raw: Any) -> dict[str, bytes]:
    """A record's headers (a list of (name, value) pairs, or None) as a dict."""
    out: dict[str, bytes] = {}
    for k, v in raw or ():
        out[str(k)] = v.encode() if isinstance(v, str) else bytes(v or b"")
    return out


def count_records(
    bootstrap: str, topic: str, decode: Callable[[bytes], Any] = orjson.loads
) -> list[Record]:
    """Every record of a topic now."""
    from confluent_kafka import Consumer, TopicPartition

    ends = end_offsets(bootstrap, [topic])
    todo = {tp: hi for tp, (lo, hi) in ends.items() if hi > lo}
    out: list[Record] = []
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
            headers = _headers(m.headers())
            out.append(Record(decode(m.value() or b"null"), m.timestamp()[1], tp[1], headers))
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
    key_prefixes_made: set[str] = field(default_factory=set)  # Redis

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

    def observer_settings(self, group: str, key_prefix: str, env: dict[str, str]) -> ObserverConfig:
        """The settings the observer processes of `group` run with (read from the same
        environment). Registers what they create for deletion at the end: the consumer groups
        `<group>` (source topics) and `<group>.keyed`, the keyed topic, the Redis keys."""
        cfg = ObserverConfig.load({"group_id": group, "key_prefix": key_prefix}, env)
        self.groups_made.add(group)
        if cfg.routing == "keyed":
            self.groups_made.add(keyed_group(group))
            self.topics_made.add(cfg.keyed_topic_name())
        self.key_prefixes_made.add(key_prefix)
        return cfg

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


def keyed_group(group: str) -> str:
    """The consumer group of the observer's tracker (the keyed topic) for source group `group`."""
    return f"{group}.keyed"


class Watch(Protocol):
    """What the measurement loop needs of a commit watcher (CommitWatch, DurableWatch)."""

    @property
    def total(self) -> int: ...

    @property
    def complete(self) -> bool: ...

    def sample(self) -> int: ...

    def progress(self) -> str: ...

    def first(self) -> tuple[float, int] | None: ...

    def rate(self) -> dict[str, Any]: ...


@dataclass
class Launch:
    """One process of a measurement."""

    cmd: list[str]
    log: str  # log file name (logs/<log>.log)
    env: dict[str, str] | None = None
    port: int | None = None  # the observer's ops API: /metrics is scraped before it stops


@dataclass
class Measured:
    """What `measure_processes` saw."""

    stopped: str  # complete | a process exited | timeout
    rate: dict[str, Any]
    startup_s: float | None  # launch to the first commit
    sampler: ProcSampler
    exit_codes: list[int | None]
    metrics: list[dict[str, float]]  # per process with a port
    extra: dict[str, Any]  # what `before_stop` returned

    def figures(self) -> dict[str, Any]:
        return {
            "stopped": self.stopped,
            **self.rate,
            "startup_s": self.startup_s,
            **self.sampler.summary(),
            "events_per_cpu_s": _per_cpu(self.rate, self.sampler),
            "exit_codes": self.exit_codes,
        }


def watch_until_done(
    run: Run,
    watch: Watch,
    procs: Sequence[subprocess.Popen[bytes]],
    sampler: ProcSampler,
) -> str:
    """Sample commits (every 0.1 s) and processes (every 0.5 s) until the watch is complete, a
    process dies, or the timeout. Returns why it stopped."""
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
        if watch.complete:
            sampler.sample()
            sampler.cpu_at_done = sum(sampler.cpu_s.values())
            return "complete"
        if any(p.poll() is not None for p in procs):
            return "a process exited"
        if now > t_end:
            return "timeout"
        if now - last_log > 10:
            log(f"  {watch.progress()}")
            last_log = now
        time.sleep(0.1)


def measure_processes(
    run: Run,
    watch: Watch,
    launches: Sequence[Launch],
    settle_s: float,
    before_stop: Callable[[], dict[str, Any]] | None = None,
) -> Measured:
    """The measurement loop every throughput-like part shares: start the processes, follow
    the watch until complete (or a process exits, or the timeout), wait `settle_s` (the
    deadline tail), sample the processes, scrape /metrics, run `before_stop`, stop them."""
    t_launch = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for launch in launches:
            f = run.logfile(launch.log)
            logs.append(f)
            procs.append(
                subprocess.Popen(
                    launch.cmd, stdout=subprocess.DEVNULL, stderr=f, env=launch.env, cwd=REPO
                )
            )
        sampler = ProcSampler([p.pid for p in procs])
        why = watch_until_done(run, watch, procs, sampler)
        time.sleep(settle_s)
        sampler.sample()
        metrics = [scrape_metrics(x.port) for x in launches if x.port is not None]
        extra = before_stop() if before_stop is not None else {}
    finally:
        codes = stop_processes(procs)
        for f in logs:
            f.close()
    first = watch.first()
    return Measured(
        stopped=why,
        rate=watch.rate(),
        startup_s=(first[0] - t_launch) if first is not None else None,
        sampler=sampler,
        exit_codes=codes,
        metrics=metrics,
        extra=extra,
    )


def check_alerts(
    records: Sequence[Record], expected: dict[str, Any], ranges: bool = True
) -> dict[str, Any]:
    """Alerts read back against what the replay expects of the workload (`expected.json`).

    - `repeats`: records whose `observer-id` header came before (at-least-once delivery allows
      them; consumers drop them by id): counted, then left out of everything below;
    - per order (its kind from `fault_orders`, else `ok`): an alert that is not one of its
      kind's template alerts (certain or possible) is `unexpected`; the same (kind, step)
      raised again for an order under another id is a `duplicate`; a certain template alert
      not raised is `absent`;
    - with `ranges`, the counts by kind against `alerts_min`/`alerts_max` (`out_of_range`:
      kind -> [min, max, got]).
    `ok` when all of these are clean (repeats are reported, not failed).
    """
    templates = expected["templates"]
    kind_of = {key: k for k, keys in expected["fault_orders"].items() for key in keys}
    allowed = {
        k: {(str(a), None if s is None else str(s)) for a, s in t["certain"] + t["possible"]}
        for k, t in templates.items()
    }
    seen_ids: set[bytes] = set()
    repeats = 0
    raised: dict[str, Counter[tuple[str, str | None]]] = {}
    for r in records:
        oid = r.headers.get("observer-id")
        if oid is not None:
            if oid in seen_ids:
                repeats += 1
                continue
            seen_ids.add(oid)
        v = r.value if isinstance(r.value, dict) else {}
        step = v.get("step")
        alert = (str(v.get("kind")), None if step is None else str(step))
        raised.setdefault(str(v.get("key")), Counter())[alert] += 1
    counts: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    duplicates: Counter[str] = Counter()
    absent: Counter[str] = Counter()
    examples: list[str] = []
    for key, got in raised.items():
        okind = kind_of.get(key, "ok")
        for (akind, step), c in got.items():
            counts[akind] += c
            label = f"{okind} order: {akind} {step}"
            if (akind, step) not in allowed.get(okind, set()):
                unexpected[label] += c
                if len(examples) < 5:
                    examples.append(f"{key}: {akind} {step}")
            elif c > 1:
                duplicates[label] += c - 1
                if len(examples) < 5:
                    examples.append(f"{key}: {akind} {step} x{c}")
    for okind, keys in expected["fault_orders"].items():
        for akind, step in templates[okind]["certain"]:
            alert = (str(akind), None if step is None else str(step))
            n = sum(1 for key in keys if raised.get(key, Counter())[alert] == 0)
            if n:
                absent[f"{okind} order: {akind} {step}"] += n
    out_of_range: dict[str, list[int]] = {}
    if ranges:
        lo, hi = expected["alerts_min"], expected["alerts_max"]
        for k in sorted(set(lo) | set(hi) | set(counts)):
            if not lo.get(k, 0) <= counts.get(k, 0) <= hi.get(k, 0):
                out_of_range[k] = [lo.get(k, 0), hi.get(k, 0), counts.get(k, 0)]
    return {
        "ok": not (out_of_range or unexpected or duplicates or absent),
        "records": len(records),
        "repeats": repeats,
        "counts": dict(sorted(counts.items())),
        "out_of_range": out_of_range,
        "unexpected": dict(unexpected),
        "duplicates": dict(duplicates),
        "absent": dict(absent),
        "examples": examples,
    }


def distinct_outcomes(records: Sequence[Record]) -> dict[str, int]:
    """Outcomes by kind, repeats of an `observer-id` counted once."""
    seen: set[bytes] = set()
    c: Counter[str] = Counter()
    for r in records:
        oid = r.headers.get("observer-id")
        if oid is not None:
            if oid in seen:
                continue
            seen.add(oid)
        if isinstance(r.value, dict):
            c[str(r.value.get("outcome"))] += 1
    return dict(sorted(c.items()))


def measure_observer(
    run: Run, manifest: dict[str, Any], expected: dict[str, Any], n: int, routing: str = "keyed"
) -> dict[str, Any]:
    """`n` processes of `observer run`, timed until the state is durable. With direct routing
    (one process) the source group's commits are that point: the router commits a batch only
    once the tracker committed it, `commit_delay_ms` after its Redis write."""
    args = run.args
    prefix = manifest["prefix"]
    label = f"obs{n}" if routing == "keyed" else f"{routing}{n}"
    group = key_prefix = f"{prefix}-{label}"
    topics = wl.runtime_topics(prefix, label)
    run.make_runtime_topics(topics)
    env = run.observer_env(topics)
    env["OBSERVER_ROUTING"] = routing
    cfg = run.observer_settings(group, key_prefix, env)
    ends = end_offsets(run.bs, manifest["source_topics"].values())
    source_watch = CommitWatch(run.bs, group, ends)
    watch: Watch = source_watch
    if routing == "keyed":
        watch = DurableWatch(source_watch, cfg.keyed_topic_name(), keyed_group(group))
    mem_before = redis_used_memory(args.redis_url)
    log(
        f"observer x{n} ({routing} routing): {watch.total:,} events, group {group}"
        + (f" and {keyed_group(group)}" if routing == "keyed" else "")
        + f", {cfg.shards} shards, commit delay {cfg.commit_delay_ms} ms"
    )
    ports = [args.http_port_base + i for i in range(n)]
    flow_dir = Path(manifest["flow_dir"])
    m = measure_processes(
        run,
        watch,
        [
            Launch(run.observer_cmd(flow_dir, group, port, key_prefix), f"{label}-{i}", env, port)
            for i, port in enumerate(ports)
        ],
        args.settle,
    )
    mem_after = redis_used_memory(args.redis_url)
    check = check_alerts(count_records(run.bs, topics.alerts), expected)
    res = {
        "processes": n,
        "routing": routing,
        "group": group,
        **m.figures(),
        "commit_delay_ms": cfg.commit_delay_ms,
        "shards": cfg.shards,
        "alerts": check["counts"],
        "alerts_check": check,
        "outcomes": distinct_outcomes(count_records(run.bs, topics.outcomes)),
        "outcomes_expected_at_least": expected["outcomes_certain"],
        "redis_used_memory_delta": mem_after - mem_before,
        "metrics": _merge_metrics(m.metrics),
        "metrics_per_process": [
            {k: v for k, v in pm.items() if k in _PER_PROCESS} for pm in m.metrics
        ],
    }
    if not args.keep:
        redis_delete_prefix(args.redis_url, key_prefix)
    log(
        f"observer x{n}: {fmt_rate(res['events_per_s'])} events/s ({m.stopped}), alerts {check['counts']}, check {_ok(check['ok'])}"
    )
    return res


_PER_PROCESS = ("observer_events_total", "observer_owned_shards", "observer_rebalances_total")


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
        "observer_rebalances_total",
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
    """Events per CPU second of the measured processes, from the first commit to completion
    (startup and the settle time after it are left out)."""
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
    m = measure_processes(run, watch, [Launch(cmd, kind)], min(args.settle, 3))
    # the peers model missing/late/error of the main path only: no warnings, so only the
    # per-order part of the check applies
    check = check_alerts(count_records(run.bs, alerts_topic), expected, ranges=False)
    shutil.rmtree(state, ignore_errors=True)
    res = {
        "processes": 1,
        "group": group,
        **m.figures(),
        "alerts": check["counts"],
        "alerts_check": check,
        "note": "peers model missing/late/error of the main path only (see benchmarks/peers/checkout.py)",
    }
    log(f"{kind}: {fmt_rate(res['events_per_s'])} events/s ({m.stopped}), alerts {check['counts']}")
    return res


# -- latency ------------------------------------------------------------------------------------


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
    env = run.observer_env(topics)
    run.observer_settings(group, key_prefix, env)
    port = args.http_port_base + 10
    proc = subprocess.Popen(
        run.observer_cmd(files.flow_dir, group, port, key_prefix),
        stdout=subprocess.DEVNULL,
        stderr=run.logfile("latency-observer"),
        env=env,
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
    grace_ms = ObserverConfig.load({}, env).idle_grace_ms
    passes = acks.watermark_passes(
        [(t, p) for t in files.source_topics.values() for p in range(args.partitions)], grace_ms
    )
    vs_watermark: list[float] = []
    vs_known: list[float] = []
    vs_deadline: list[float] = []
    vs_receipt: list[float] = []
    found: set[str] = set()
    samples: list[tuple[int, int, int, int]] = []  # deadline, knowable, watermark, alert time
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
            vs_watermark.append(broker_ts - passes(d))
            samples.append((d, knowable(d), passes(d), broker_ts))
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
        "idle_grace_ms": grace_ms,
        "warmup_s": args.latency_warmup,
        "ms_after_watermark": stats(vs_watermark),
        # the same without the deadlines of the first --latency-warmup seconds: the first alerts
        # of a fresh observer wait for producer metadata and warm-up (both figures are reported)
        "ms_after_watermark_steady": stats(
            [
                a - w
                for d, _k, w, a in samples
                if d >= min(x[0] for x in samples) + args.latency_warmup * 1000
            ]
        ),
        "ms_after_knowable": stats(vs_known),
        "ms_after_deadline": stats(vs_deadline),
        "receipt_ms_after_deadline": stats(vs_receipt),
        **sampler.summary(),
        "exit_codes": codes,
        "observer_env": list(args.observer_env),
        "samples": sorted(samples),
    }
    log(
        f"latency: p50 {res['ms_after_watermark']['p50']:.0f} ms, p99 {res['ms_after_watermark']['p99']:.0f} ms after the watermark passed; {len(found)}/{len(deadlines)} alerts"
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
    env = run.observer_env(topics)
    cfg = run.observer_settings(group, key_prefix, env)
    ends = end_offsets(run.bs, files.source_topics.values())
    watch = DurableWatch(
        CommitWatch(run.bs, group, ends), cfg.keyed_topic_name(), keyed_group(group)
    )
    mem_before = redis_used_memory(args.redis_url)
    # the bucket hashes are compact only within these (ops/stack sets them; a Redis started
    # before that still has the defaults until `ops/stack restart-redis`)
    r = redis_client(args.redis_url)
    try:
        listpack = {k: int(v) for k, v in r.config_get("hash-max-listpack-*").items()}
    finally:
        r.close()
    if listpack.get("hash-max-listpack-value", 0) < 1024:
        log(f"memory: Redis has {listpack}: state buckets will not be compact listpacks")
    port = args.http_port_base + 20

    def look() -> dict[str, Any]:
        return {
            "mem_after": redis_used_memory(args.redis_url),
            "usage": redis_key_usage(args.redis_url, key_prefix, args.memory_sample),
        }

    m = measure_processes(
        run,
        watch,
        [
            Launch(
                run.observer_cmd(files.flow_dir, group, port, key_prefix),
                "memory-observer",
                env,
                port,
            )
        ],
        args.settle,
        look,
    )
    metrics = m.metrics[0] if m.metrics else {}
    mem_after, usage = m.extra["mem_after"], m.extra["usage"]
    why, sampler, codes = m.stopped, m.sampler, m.exit_codes
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
        "bucket_encodings": usage["bucket_encodings"],
        "fields_per_bucket": usage["fields_per_bucket"],
        "redis_listpack_settings": listpack,
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
    """MEMORY USAGE of the observer's keys by kind: keys of one instance (`slot` strings of
    store format 1, `hist` lists) sampled and extrapolated to their count; every other key
    measured whole: `bucket` hashes (`P:{s}:b:<flow>:<n>`, the slots of format 2), `bucket_due`
    sets (`P:{s}:d:<n>`, if a layout has them), the shards' `due` indexes, outbox, stats, meta.
    Also how the bucket hashes are encoded (listpack is the compact one) and how full."""
    kinds = {"b": "bucket", "d": "bucket_due"}
    r = redis_client(url)

    def each(ks: list[bytes], command: Callable[[Any, bytes], Any]) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(ks), 5000):
            pipe = r.pipeline(transaction=False)
            for k in ks[i : i + 5000]:
                command(pipe, k)
            out += pipe.execute()
        return out

    def usage(pipe: Any, k: bytes) -> Any:
        return pipe.memory_usage(k, samples=0)

    try:
        keys_by_kind: Counter[str] = Counter()
        per_kind_sample: dict[str, list[bytes]] = {}
        whole: dict[str, list[bytes]] = {}
        for k in r.scan_iter(match=f"{prefix}:*", count=5000):
            rest = k.decode()[len(prefix) + 1 :]
            parts = rest.split(":")
            kind = parts[1] if rest.startswith("{") and len(parts) > 1 else parts[0]
            kind = kinds.get(kind, kind)
            keys_by_kind[kind] += 1
            if kind in ("slot", "hist"):
                lst = per_kind_sample.setdefault(kind, [])
                if len(lst) < sample:
                    lst.append(k)
            else:
                whole.setdefault(kind, []).append(k)
        bytes_by_kind: dict[str, float] = {}
        for kind, ks in per_kind_sample.items():
            sizes = [s or 0 for s in each(ks, usage)]
            bytes_by_kind[kind] = sum(sizes) / len(sizes) * keys_by_kind[kind] if sizes else 0.0
        for kind, ks in whole.items():
            bytes_by_kind[kind] = float(sum(s or 0 for s in each(ks, usage)))
        buckets = whole.get("bucket", [])
        encodings = Counter(
            e.decode() if isinstance(e, bytes) else str(e)
            for e in each(buckets, lambda p, k: p.object("encoding", k))
        )
        fields = sum(each(buckets, lambda p, k: p.hlen(k)))
        stats = r.hgetall(f"{prefix}:stats")
        open_n = sum(int(v) for f, v in stats.items() if f.startswith(b"open:"))
        return {
            "keys_by_kind": dict(keys_by_kind),
            "bytes_by_kind": bytes_by_kind,
            "total_bytes": sum(bytes_by_kind.values()),
            "sampled": {k: len(v) for k, v in per_kind_sample.items()},
            "open_instances": open_n,
            "bucket_encodings": dict(encodings),
            "fields_per_bucket": fields / len(buckets) if buckets else None,
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
        note = f"x{scale:.2f} of 1 proc; " if scale else ""
        if r.get("routed_events_per_s"):
            note += f"router alone {fmt_rate(r['routed_events_per_s'])}/s, keyed backlog then {r.get('keyed_backlog_at_routed') or 0:,}"
        rows.append((f"observer x{n}", r, note))
    direct = res.get("direct")
    if direct:
        scale = direct["events_per_s"] / base if base and direct.get("events_per_s") else None
        rows.append(("direct x1", direct, f"x{scale:.2f} of 1 keyed proc; " if scale else ""))
    one = best_single(res)
    base = one.get("events_per_s")
    for kind in ("faust", "quix"):
        r = res.get(kind)
        if r:
            ratio = base / r["events_per_s"] if base and r.get("events_per_s") else None
            base_cpu = one.get("events_per_cpu_s")
            cpu_ratio = (
                base_cpu / r["events_per_cpu_s"] if base_cpu and r.get("events_per_cpu_s") else None
            )
            note = f"ours ({one.get('routing', 'keyed')} x1)/{kind} = {ratio:.1f}x" if ratio else ""
            if cpu_ratio:
                note += f" ({cpu_ratio:.1f}x per CPU s)"
            rows.append((kind, r, note))
    if rows:
        lines.append("")
        lines.append(
            f"{'throughput':<14}{'events/s':>11}{'events':>11}{'seconds':>9}{'tail s':>8}{'cpu s':>8}{'ev/cpu-s':>10}{'peak RSS MB':>13}  {'alerts':<7}{'by kind':<44} note"
        )
        for name, r, note in rows:
            secs = r.get("seconds")
            tail = r.get("durable_tail_s")
            check = r.get("alerts_check") or {}
            lines.append(
                f"{name:<14}{fmt_rate(r.get('events_per_s')):>11}{r.get('events', 0):>11,}{(secs or 0):>9.2f}{'-' if tail is None else f'{tail:.2f}':>8}{sum(r.get('cpu_s', [])):>8.1f}{fmt_rate(r.get('events_per_cpu_s')):>10}{max(r.get('peak_rss_mb', [0])):>13.0f}  {_ok(check.get('ok')):<7}{json.dumps(r.get('alerts', {})):<44} {note}{'' if r.get('complete') else ' (INCOMPLETE: ' + str(r.get('stopped')) + ')'}"
            )
        first = obs.get("1") or next(iter(obs.values()), None) or direct
        if first:
            lines.append(
                f"observer: seconds = first source commit -> state durable (keyed: group <group>.keyed committed all routed, source group all; direct: the source group committed all); keyed includes `tail s` = routed -> durable; the commit delay is {first.get('commit_delay_ms')} ms"
            )
        for name, r, _ in rows:
            check = r.get("alerts_check")
            if not check:
                continue
            problems = {
                k: check[k]
                for k in ("out_of_range", "unexpected", "duplicates", "absent")
                if check.get(k)
            }
            if problems or check.get("repeats"):
                lines.append(
                    f"{name} alerts: {json.dumps(problems)}; repeats of an observer-id (allowed, dropped): {check.get('repeats', 0)}; e.g. {check.get('examples', [])[:3]}"
                )
        checks = [
            r["alerts_check"]
            for n, r, _ in rows
            if n.startswith("observer") and r.get("alerts_check")
        ]
        if checks:
            lines.append(
                "observer alerts per order and within the replay's expected range: "
                + _ok(all(c["ok"] for c in checks))
            )
    lat = res.get("latency")
    if lat:
        w, k, d = lat["ms_after_watermark"], lat["ms_after_knowable"], lat["ms_after_deadline"]
        lines.append("")
        lines.append(
            f"detection latency ({lat['deadlines']} deadlines of `{lat['missing_step']}`, live at {lat['events_per_s']:.0f} events/s, idle grace {lat['idle_grace_ms']} ms):"
        )
        lines.append(
            f"  alert broker time - when the watermark passed:     p50 {w['p50']:.0f} ms, p99 {w['p99']:.0f} ms, max {w['max']:.0f} ms"
        )
        st = lat.get("ms_after_watermark_steady")
        if st:
            lines.append(
                f"    after the first {lat.get('warmup_s', 0):.0f} s of deadlines:            p50 {st['p50']:.0f} ms, p99 {st['p99']:.0f} ms, max {st['max']:.0f} ms"
            )
        lines.append(
            f"  alert broker time - all records <= D acked:        p50 {k['p50']:.0f} ms, p99 {k['p99']:.0f} ms, max {k['max']:.0f} ms"
        )
        lines.append(
            f"  alert broker time - deadline:                      p50 {d['p50']:.0f} ms, p99 {d['p99']:.0f} ms, max {d['max']:.0f} ms"
        )
        lines.append(
            f"  alerts matched {lat['alerts_matched']}/{lat['deadlines']}, unexpected {lat['unexpected_alerts'] or 0}"
        )
    mem = res.get("memory")
    if mem and mem.get("open_instances") is not None:
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


def best_single(res: dict[str, Any]) -> dict[str, Any]:
    """The faster one-process run (keyed or direct routing): what the one-process targets and
    the peer ratios compare."""
    runs = [r for r in (res.get("observer", {}).get("1"), res.get("direct")) if r]
    return max(runs, key=lambda r: r.get("events_per_s") or 0, default={})


def targets(res: dict[str, Any]) -> dict[str, bool | None]:
    obs = res.get("observer", {})
    one = best_single(res).get("events_per_s")
    keyed_one = obs.get("1", {}).get("events_per_s")
    out: dict[str, bool | None] = {}
    out[">=150k/s 1 proc"] = one >= TARGETS["observer_events_per_s"] if one else None
    for kind, need in (("faust", TARGETS["vs_faust"]), ("quix", TARGETS["vs_quix"])):
        theirs = res.get(kind, {}).get("events_per_s")
        out[f">={need:.0f}x {kind}"] = one / theirs >= need if one and theirs else None
    for n in ("2", "4"):
        r = obs.get(n, {}).get("events_per_s")
        out[f"{n} procs within 20% of linear"] = (
            r >= int(n) * keyed_one * (1 - TARGETS["scaling_within"]) if r and keyed_one else None
        )
    lat = res.get("latency", {}).get("ms_after_watermark", {}).get("p99")
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
        "--latency-warmup",
        type=float,
        default=5,
        help="seconds of deadlines left out of the steady-state latency figure",
    )
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


def cleanup(run: Run, wait_s: float = 120) -> None:
    """Delete the run's topics (the observers' keyed topics included) and consumer groups
    (`<group>` and `<group>.keyed`), retrying for up to `wait_s` (a broker restarting, a group
    still settling); what is left is named in the log."""
    topics, groups = set(run.topics_made), set(run.groups_made)
    n_topics, n_groups = len(topics), len(groups)
    listed = False
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if not listed:
                for p in run.prefixes_made:
                    topics.update(topics_matching(run.bs, p))
                n_topics, listed = len(topics), True
            groups -= delete_groups(run.bs, groups)
            topics -= delete_topics(run.bs, topics)
        except KafkaException as exc:
            log(f"cleanup: {exc}")
        if (listed and not topics and not groups) or time.monotonic() > deadline:
            break
        time.sleep(2)
    with contextlib.suppress(Exception):  # what a measurement cut short left
        for prefix in sorted(run.key_prefixes_made):
            redis_delete_prefix(run.args.redis_url, prefix)
    log(
        f"deleted {n_topics - len(topics)}/{n_topics} topics (keyed topics included) and {n_groups - len(groups)}/{n_groups} consumer groups (<group>, <group>.keyed); --keep keeps them"
        + (
            f"; NOT deleted: topics {sorted(topics)} groups {sorted(groups)}"
            if topics or groups
            else ""
        )
    )


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
            if any(p in args.parts for p in ("observer", "direct", "faust", "quix")):
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
                if "direct" in args.parts:
                    res["direct"] = measure_observer(run, manifest, expected, 1, "direct")
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
                cleanup(run)
    print(report(res))
    print(f"\nfigures: {path}")


if __name__ == "__main__":
    main()
