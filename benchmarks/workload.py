"""Write a checkout workload to real Kafka, and the deviations `observer replay` expects of it.

    python benchmarks/workload.py [--flow flows/checkout.yaml] [--orders 200000] [--prefix P]

Topics. The flow file names its topics, so every run writes a copy of the flow with each
source and command topic renamed `<prefix>.<topic>` (and webhook URLs pointed at a local sink)
to `<out>/flow/`, creates those topics (4 partitions) and produces to them. Runs never share a
topic, nothing is deleted behind anyone's back, and the observer and the peers read exactly the
file that describes the data. `benchmarks/run.py` deletes its run's topics at the end (unless
`--keep`); a workload written by this script alone stays until `--delete PREFIX`.

Orders. Each order follows the flow's main path; step times are drawn from the flow itself:
a step comes 5-50 % of the way into its window (of its warn point, when it has one), the
order's start is spread evenly over `--span`, and the whole workload lies in the past (it ends
`expire` + 1 min before the generator starts), so an observer that has read it all has a
watermark at the wall clock and every deadline, warning, SLA point and expiry has fired.
Records are produced in event-time order (every partition is in time order) with the event
time also as the record timestamp, keyed by the order id (all topics partition alike).

Deviations (`--deviation-rate`, default 2 %: every 50th order, the kinds in turn):
  missing  the step `--missing-step` (default: the first windowed step after the start) and
           every step anchored on it never happen; if its `if_missing` switches to a path, the
           services react to the observer's command: that path's steps come after the deadline
  late     the step `--late-step` (default: the first step with `if_late`) comes 1 s to half a
           window after its deadline; the rest of the order follows it
  error    the flow's first error event (PaymentFailed) replaces the first step of its source;
           steps anchored on that one never happen; the path the error switches to completes

Expected figures come from the engine itself: each kind of order is replayed alone through
`observer.replay.Replayer` (its clock advanced past `expire` + `retain`), and the first
`--verify-orders` orders are replayed together to check that the per-kind template holds.
A late step may be read before the observer's watermark passes its deadline (sources are
separate topics), so for `late` orders the alerts that depend on that order (the warning and
`missing` of the step) are `possible`, not `certain`: the second template replays the late
record as if read right after its anchor. Files written to `--out` (default
benchmarks/results/workload-<prefix>/): `flow/<file>.yaml`, `workload.json` (what was
written where), `expected.json` (alert and outcome counts, fault orders by kind) and
`peer-spec.json` (the flow, reduced for the hand-written peers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, create_topics, delete_topics, log, now_ms, topics_matching
from benchmarks.expected import expected_templates, peer_spec, verify_sample
from benchmarks.flow_copy import WorkloadFiles, prepare_flow, runtime_topics
from benchmarks.orders import FAULTS, Emit, OrderModel, order_key
from benchmarks.records import RecordEncoder, generate, produce_records, producer_config

__all__ = [
    "FAULTS",
    "Emit",
    "OrderModel",
    "RecordEncoder",
    "WorkloadFiles",
    "build_workload",
    "generate",
    "main",
    "order_key",
    "prepare_flow",
    "produce_records",
    "producer_config",
    "runtime_topics",
]

DEFAULT_FLOW = REPO / "flows" / "checkout.yaml"


def build_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the flow copy and topics, produce the workload, write the files. Returns the
    manifest (also in `<out>/workload.json`)."""
    prefix = args.prefix or default_prefix()
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"workload-{prefix}"
    out.mkdir(parents=True, exist_ok=True)
    files = prepare_flow(Path(args.flow), prefix, out, args.webhook_sink)
    flow = files.flow
    model = OrderModel.build(flow, args.missing_step, args.late_step)
    enc = RecordEncoder(files, args.event_bytes, args.time_format)
    kinds = [k for k in args.faults.split(",") if k]
    for k in kinds:
        if k not in FAULTS:
            raise SystemExit(f"--faults: unknown kind {k!r} (known: {', '.join(FAULTS)})")
    span_ms = int(args.span * 1000)
    # everything in the past: the last order ends `expire` + 1 min before now
    t0 = now_ms() - span_ms - model.horizon_ms() - flow.expire_ms - 60_000
    t0 -= t0 % 1000

    templates = expected_templates(files, enc, model, t0, args.seed)
    check = verify_sample(
        files, enc, model, templates, min(args.verify_orders, args.orders), t0,
        span_ms * min(args.verify_orders, args.orders) / max(1, args.orders),
        args.seed, args.deviation_rate, kinds, args.key_style,
    )  # fmt: skip
    if check["mismatches"]:
        log(
            f"WARNING: {check['mismatches']} sample orders differ from their template: {check['examples'][:2]}"
        )

    topics = sorted(files.source_topics.values())
    if not args.no_produce:
        create_topics(args.bootstrap_servers, topics, args.partitions)
        create_topics(args.bootstrap_servers, files.action_topics, args.partitions)
    faults: dict[str, list[str]] = {k: [] for k in FAULTS}
    records = generate(
        model, enc, args.orders, t0, span_ms, args.seed, args.deviation_rate, kinds,
        args.key_style, faults,
    )  # fmt: skip
    t = time.perf_counter()
    if args.no_produce:
        n = sum(1 for _ in records)
    else:
        n = produce_records(args.bootstrap_servers, records)
    secs = time.perf_counter() - t
    log(
        f"{'generated' if args.no_produce else 'produced'} {n:,} events of {args.orders:,} orders in {secs:.1f}s ({n / secs:,.0f}/s)"
    )

    counts = {k: len(v) for k, v in faults.items()}
    n_ok = args.orders - sum(counts.values())
    amin: Counter[str] = Counter()
    amax: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for kind, tmpl in templates.items():
        n_kind = n_ok if kind == "ok" else counts.get(kind, 0)
        for k, _step in tmpl["certain"]:
            amin[k] += n_kind
            amax[k] += n_kind
        for k, _step in tmpl["possible"]:
            amax[k] += n_kind
        if tmpl["outcome_certain"]:
            for o in tmpl["outcome_certain"]:
                outcomes[o] += n_kind
    expected = {
        "flow": flow.name,
        "version": flow.version,
        "orders": args.orders,
        "events": n,
        "templates": templates,
        "fault_steps": {k: model.fault_step(k) for k in FAULTS},
        "orders_by_kind": {"ok": n_ok, **counts},
        "alerts_min": dict(sorted(amin.items())),
        "alerts_max": dict(sorted(amax.items())),
        "outcomes_certain": dict(sorted(outcomes.items())),
        "missing_orders": sorted(
            k
            for kind, keys in faults.items()
            if any(a[0] == "missing" for a in templates[kind]["certain"])
            for k in keys
        ),
        "fault_orders": faults,
        "sample_check": check,
    }
    manifest = {
        "prefix": prefix,
        "bootstrap_servers": args.bootstrap_servers,
        "flow_file": str(Path(args.flow)),
        "flow_dir": str(files.flow_dir),
        "flow": flow.name,
        "version": flow.version,
        "source_topics": files.source_topics,
        "action_topics": files.action_topics,
        "partitions": args.partitions,
        "orders": args.orders,
        "events": n,
        "events_per_order": n / max(1, args.orders),
        "event_bytes": args.event_bytes,
        "time_format": args.time_format,
        "key_style": args.key_style,
        "event_time_first": t0,
        "event_time_last": t0 + span_ms + model.horizon_ms(),
        "span_s": args.span,
        "seed": args.seed,
        "deviation_rate": args.deviation_rate,
        "produced": not args.no_produce,
        "produce_s": secs,
        "produce_events_per_s": n / secs if secs > 0 else None,
        "webhook_sink": args.webhook_sink,
    }
    (out / "workload.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    (out / "peer-spec.json").write_text(json.dumps(peer_spec(files), indent=2) + "\n")
    manifest["out"] = str(out)
    return manifest


def default_prefix() -> str:
    """`bench-<epoch seconds in base 36>`: unique per run and short (Quix Streams names its
    changelog topic after every source topic, within Kafka's 255 characters)."""
    n, digits = int(time.time()), ""
    while n:
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    return f"bench-{digits}"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--flow", default=str(DEFAULT_FLOW), help="flow file (default: %(default)s)")
    ap.add_argument("--orders", type=int, default=200_000, help="orders (default: %(default)s)")
    ap.add_argument(
        "--prefix", default=None, help="topic prefix (default: bench-<base-36 epoch seconds>)"
    )
    ap.add_argument(
        "--out",
        default=None,
        help="folder for the files (default: benchmarks/results/workload-<prefix>)",
    )
    ap.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument(
        "--span",
        type=float,
        default=3600.0,
        help="seconds of event time the order starts spread over (default: %(default)s)",
    )
    ap.add_argument("--deviation-rate", type=float, default=0.02)
    ap.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help="kinds of deviation, in turn (default: %(default)s)",
    )
    ap.add_argument("--missing-step", default=None)
    ap.add_argument("--late-step", default=None)
    ap.add_argument("--event-bytes", type=int, default=300, help="approximate JSON value size")
    ap.add_argument(
        "--time-format",
        choices=("ms", "iso"),
        default="ms",
        help="event time in values: epoch ms or ISO-8601",
    )
    ap.add_argument(
        "--key-style",
        choices=("uuid", "short"),
        default="uuid",
        help="order ids: UUIDs (36 chars) or o-<n>",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--verify-orders",
        type=int,
        default=1000,
        help="orders replayed together to check the templates",
    )
    ap.add_argument(
        "--webhook-sink",
        default="http://127.0.0.1:18099",
        help="webhook URLs of the copy point here",
    )
    ap.add_argument("--no-produce", action="store_true", help="write the files only (no Kafka)")
    ap.add_argument(
        "--delete",
        metavar="PREFIX",
        default=None,
        help="delete every topic whose name contains PREFIX, and exit",
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(ap)
    args = ap.parse_args(argv)
    if args.delete:
        names = topics_matching(args.bootstrap_servers, args.delete)
        print(f"deleted {len(delete_topics(args.bootstrap_servers, names))} of {len(names)} topics")
        return
    m = build_workload(args)
    print(
        json.dumps(
            {k: m[k] for k in ("prefix", "out", "orders", "events", "produce_events_per_s")},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
