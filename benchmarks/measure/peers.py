"""Throughput of the hand-written peers (faust-streaming, Quix Streams; `benchmarks/peers/`)
on the same workload, timed until their consumer group committed it all; their alerts checked
per order."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, CommitWatch, create_topics, end_offsets, fmt_rate, log
from benchmarks.harness import Run
from benchmarks.processes import Launch, measure_processes
from benchmarks.readback import check_alerts, count_records


def measure_peer(
    run: Run, manifest: dict[str, Any], expected: dict[str, Any], kind: str
) -> dict[str, Any]:
    """`benchmarks/peers/<kind>_peer.py` (faust or quix) in `--peer-python`, timed until its
    consumer group committed every workload record."""
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
    # per-order part of the check applies, held to the certain alerts (benchmarks/peers/
    # checkout.py: their grace makes a late step `late` only, as due)
    check = check_alerts(count_records(run.bs, alerts_topic), expected, ranges=False, due_only=True)
    shutil.rmtree(state, ignore_errors=True)
    res = {
        "processes": 1,
        "group": group,
        **m.figures(),
        "alerts": check["counts"],
        "alerts_check": check,
        "missing_due": len(expected["missing_orders"]),
        "note": "peers model missing/late/error of the main path only (see benchmarks/peers/checkout.py)",
    }
    log(f"{kind}: {fmt_rate(res['events_per_s'])} events/s ({m.stopped}), alerts {check['counts']}")
    return res
