"""What the observer must publish for a workload, from the engine itself: each kind of order
replayed alone through `observer.replay.Replayer` (the per-kind templates, certain and
possible alerts), a sample of the workload replayed together to check them; and the flow
reduced to what the hand-written peers implement."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from benchmarks.flow_copy import WorkloadFiles
from benchmarks.orders import FAULTS, Emit, OrderModel, fault_of, order_key
from benchmarks.records import RecordEncoder
from observer.engine.effects import Effect, Publish
from observer.flows.compiler import load_registry
from observer.ingest import SourceRecord
from observer.replay import Replayer, ReplayRecord

__all__ = ["expected_templates", "peer_spec", "verify_sample"]


def _replay_orders(
    files: WorkloadFiles,
    enc: RecordEncoder,
    orders: Sequence[tuple[str, list[Emit]]],
    until: int,
) -> dict[str, dict[str, list[Any]]]:
    """Replay orders (interleaved in read-time order); per key: alerts [(kind, step)] and
    outcomes."""
    topics = files.runtime_topics("expected")
    out: dict[str, dict[str, list[Any]]] = {k: {"alerts": [], "outcomes": []} for k, _ in orders}

    def emit(eff: Effect, now: int) -> None:
        if not isinstance(eff, Publish) or not isinstance(eff.value, dict):
            return
        key = eff.key or ""
        if key not in out:
            return
        if eff.category == "alert":
            out[key]["alerts"].append((eff.value.get("kind"), eff.value.get("step")))
        elif eff.category == "outcome":
            out[key]["outcomes"].append(eff.value.get("outcome"))

    recs: list[tuple[int, int, SourceRecord]] = []
    for key, emits in orders:
        for n, e in enumerate(emits):
            topic, kb, value, headers, ts = enc.encode(e, key, f"{key}/{n}")
            read = e.read_at if e.read_at is not None else e.at
            recs.append((read, len(recs), SourceRecord(topic, 0, 0, kb, value, headers, ts)))
    recs.sort(key=lambda r: (r[0], r[1]))
    replayer = Replayer(load_registry([files.flow_dir]), emit, topics)
    # the replay clock is the record timestamp: use the read time for it
    stream = (
        ReplayRecord(i, SourceRecord(r.topic, 0, i, r.key, r.value, r.headers, read))
        for i, (read, _, r) in enumerate(recs)
    )
    replayer.run(stream, [], until)
    return out


def _early_late(model: OrderModel, emits: list[Emit]) -> list[Emit]:
    """The late step's record read right after its latest anchor (before its deadline)."""
    lt = model.late_step
    at = {e.step: e.at for e in emits}
    anchor = max((at[a] for a in lt.anchors if a in at), default=min(at.values()))
    return [
        Emit(e.step, e.source, e.type, e.at, anchor + 1) if e.step == lt.index else e for e in emits
    ]


def expected_templates(
    files: WorkloadFiles, enc: RecordEncoder, model: OrderModel, t0: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Per order kind: the alerts certain and possible, and the outcome."""
    until_pad = files.flow.expire_ms + files.flow.retain_ms + model.horizon_ms() + 60_000
    out: dict[str, dict[str, Any]] = {}
    for kind in ("ok", *FAULTS):
        rng = random.Random(f"template/{seed}/{kind}")
        emits = model.order(t0, None if kind == "ok" else kind, rng)
        variants = [emits]
        if kind == "late":
            variants.append(_early_late(model, emits))
        results = []
        for v in variants:
            key = f"template-{kind}"
            res = _replay_orders(files, enc, [(key, v)], t0 + until_pad)[key]
            results.append(res)
        counts = [Counter(map(tuple, r["alerts"])) for r in results]
        certain = counts[0].copy()
        union = counts[0].copy()
        for c in counts[1:]:
            certain &= c
            union |= c
        possible = union - certain
        out[kind] = {
            "certain": sorted([list(k) for k in certain.elements()], key=str),
            "possible": sorted([list(k) for k in possible.elements()], key=str),
            "outcomes": sorted({o for r in results for o in r["outcomes"]}),
            "outcome_certain": results[0]["outcomes"]
            if len({tuple(r["outcomes"]) for r in results}) == 1
            else None,
            "events": len(emits),
        }
    return out


def verify_sample(
    files: WorkloadFiles,
    enc: RecordEncoder,
    model: OrderModel,
    templates: dict[str, dict[str, Any]],
    orders: int,
    t0: int,
    span_ms: int,
    seed: int,
    rate: float,
    kinds: Sequence[str],
    key_style: str,
) -> dict[str, Any]:
    """Replay the first `orders` orders together (same draws as the produced workload) and
    check every order's alerts against its kind's template (certain <= got <= certain+possible)."""
    rng = random.Random(seed)
    step_ms = span_ms / max(1, orders)
    sample = []
    kind_of = {}
    for i in range(orders):
        fault = fault_of(i, rate, kinds)
        key = order_key(key_style, seed, i)
        kind_of[key] = fault or "ok"
        sample.append((key, model.order(t0 + int(i * step_ms), fault, rng)))
    until = t0 + span_ms + files.flow.expire_ms + files.flow.retain_ms + model.horizon_ms()
    got = _replay_orders(files, enc, sample, until)
    bad = []
    for key, res in got.items():
        tmpl = templates[kind_of[key]]
        c = Counter(map(tuple, res["alerts"]))
        certain = Counter(map(tuple, tmpl["certain"]))
        allowed = certain + Counter(map(tuple, tmpl["possible"]))
        if (certain - c) or (c - allowed):
            bad.append({"key": key, "kind": kind_of[key], "alerts": res["alerts"]})
    return {"orders": orders, "mismatches": len(bad), "examples": bad[:5]}


def peer_spec(files: WorkloadFiles) -> dict[str, Any]:
    """The flow reduced to what the hand-written peers implement: the main path's steps with
    windows and anchors, and the error events."""
    flow = files.flow
    return {
        "flow": flow.name,
        "sources": {
            name: {
                "topic": s.topic,
                "type": s.type_text,
                "key": s.key_text,
                "time": s.time_text,
            }
            for name, s in flow.sources.items()
        },
        "steps": [
            {
                "name": flow.steps[i].name,
                "on": sorted([list(x) for x in flow.steps[i].on]),
                "anchors": [flow.steps[a].name for a in flow.steps[i].anchors],
                "within_ms": flow.steps[i].within_ms,
                "optional": flow.steps[i].optional,
            }
            for i in flow.paths[0].steps
        ],
        "errors": [sorted([list(x) for x in e.on]) for e in flow.errors],
    }
