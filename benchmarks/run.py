"""The observer's benchmark on the real stack: throughput with 1, 2 and 4 `observer run`
processes (and one with `OBSERVER_ROUTING=direct`), the same check hand-written with faust-streaming and Quix Streams on the same
workload, detection latency with a live producer, and Redis memory per open instance.

    python benchmarks/run.py                          # everything, full size (200k orders)
    python benchmarks/run.py --orders 5000 --only observer,quix --processes 1,2

Needs Kafka on --bootstrap-servers and Redis on --redis-url (`ops/stack start`). The peers
need `pip install -r benchmarks/peers/requirements.txt` (see docs/benchmarks.md: a separate venv, benchmarks/.venv,
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
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import workload as wl
from benchmarks.common import REPO
from benchmarks.harness import Run, cleanup, prepare_workload
from benchmarks.measure.latency import measure_latency
from benchmarks.measure.memory import measure_memory
from benchmarks.measure.observer import measure_observer
from benchmarks.measure.peers import measure_peer
from benchmarks.processes import webhook_sink
from benchmarks.report import report, targets

PARTS = ("observer", "direct", "cluster", "faust", "quix", "latency", "memory")
THROUGHPUT_PARTS = ("observer", "direct", "cluster", "faust", "quix")  # these measure the workload


def _default_python(candidates: Sequence[Path]) -> str:
    for c in candidates:
        if c.exists():
            return str(c)
    return sys.executable


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
        "--redis-cluster-url",
        default="redis+cluster://127.0.0.1:7000",
        help="the `cluster` part's Redis Cluster (ops/stack start redis-cluster)",
    )
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


def measure(run: Run) -> None:
    """Every part asked for, in order; figures go to `run.results`."""
    args, res = run.args, run.results
    if any(p in args.parts for p in THROUGHPUT_PARTS):
        manifest, expected = prepare_workload(run)
        if "observer" in args.parts:
            res["observer"] = {
                str(n): measure_observer(run, manifest, expected, n) for n in args.process_counts
            }
        if "direct" in args.parts:
            res["direct"] = measure_observer(run, manifest, expected, 1, "direct")
        if "cluster" in args.parts:  # one keyed process, its state on a Redis Cluster
            url = args.redis_cluster_url
            res["cluster"] = measure_observer(run, manifest, expected, 1, redis_url=url)
        for kind in ("faust", "quix"):
            if kind in args.parts:
                res[kind] = measure_peer(run, manifest, expected, kind)
    if "latency" in args.parts:
        res["latency"] = measure_latency(run)
    if "memory" in args.parts:
        res["memory"] = measure_memory(run)


def _commit() -> str:
    """The commit measured (`+dirty` when the work tree has changes), for the results."""

    def git(*cmd: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *cmd], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = REPO / "benchmarks" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    run = Run(args, stamp, out)
    res = run.results
    res.update(
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        commit=_commit(),
        argv=sys.argv[1:],
        machine={"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        observer_python=args.observer_python,
        peer_python=args.peer_python,
    )
    sink_port = int(args.webhook_sink.rsplit(":", 1)[1].split("/")[0])
    with webhook_sink(sink_port) as sink:
        try:
            measure(run)
        finally:
            res["webhooks_received"] = sink.count
            res["targets"] = targets(res)
            res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            res["machine"]["load_avg_at_end"] = os.getloadavg()
            path = REPO / "benchmarks" / "results" / f"{stamp}.json"
            path.write_text(json.dumps(res, indent=2, default=str) + "\n")
            if not args.keep:
                cleanup(run)
    print(report(res))
    load = res["machine"]
    print(
        f"\ncommit {res['commit']}; load average at start {load['load_avg_at_start'][0]:.1f}, "
        f"at end {load['load_avg_at_end'][0]:.1f} ({load['cpus']} CPUs)"
    )
    print(f"figures: {path}")


if __name__ == "__main__":
    main()
