"""Throughput of `observer run`: N processes with keyed routing, or one with direct routing,
timed until their state is durable; their alerts checked against the replay's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import workload as wl
from benchmarks.common import (
    CommitWatch,
    DurableWatch,
    end_offsets,
    fmt_rate,
    log,
    redis_delete_prefix,
)
from benchmarks.harness import Run, keyed_group
from benchmarks.processes import Launch, Watch, measure_processes
from benchmarks.readback import (
    check_alerts,
    count_records,
    distinct_outcomes,
    redis_cpu_s,
    redis_used_memory,
)
from benchmarks.report import _ok


def measure_observer(
    run: Run,
    manifest: dict[str, Any],
    expected: dict[str, Any],
    n: int,
    routing: str = "keyed",
    redis_url: str | None = None,
) -> dict[str, Any]:
    """`n` processes of `observer run`, timed until the state is durable. With direct routing
    (one process) the source group's commits are that point: the router commits a batch only
    once the tracker committed it, `commit_delay_ms` after its Redis write. `redis_url`:
    another Redis than `--redis-url` (the `cluster` part: a Redis Cluster)."""
    args = run.args
    prefix = manifest["prefix"]
    label = f"obs{n}" if routing == "keyed" else f"{routing}{n}"
    if redis_url is not None:
        label = f"cluster{n}"
    redis_url = redis_url or args.redis_url
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
    mem_before = redis_used_memory(redis_url)
    cpu_before = redis_cpu_s(redis_url)
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
            Launch(
                run.observer_cmd(flow_dir, group, port, key_prefix, redis_url),
                f"{label}-{i}",
                env,
                port,
            )
            for i, port in enumerate(ports)
        ],
        args.settle,
    )
    mem_after = redis_used_memory(redis_url)
    redis_cpu = redis_cpu_s(redis_url) - cpu_before  # the whole measurement, start-up included
    check = check_alerts(count_records(run.bs, topics.alerts), expected)
    res = {
        "processes": n,
        "routing": routing,
        "redis": "cluster" if label.startswith("cluster") else "single",
        "group": group,
        **m.figures(),
        "commit_delay_ms": cfg.commit_delay_ms,
        "shards": cfg.shards,
        "alerts": check["counts"],
        "alerts_check": check,
        "outcomes": distinct_outcomes(count_records(run.bs, topics.outcomes)),
        "outcomes_expected_at_least": expected["outcomes_certain"],
        "redis_used_memory_delta": mem_after - mem_before,
        "redis_cpu_s": redis_cpu,
        "redis_cpu_us_per_event": redis_cpu * 1e6 / max(1, watch.total),
        "metrics": _merge_metrics(m.metrics),
        "metrics_per_process": [
            {k: v for k, v in pm.items() if k in _PER_PROCESS} for pm in m.metrics
        ],
    }
    if not args.keep:
        redis_delete_prefix(redis_url, key_prefix)
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
