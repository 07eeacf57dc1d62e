"""Engine-only figures for a flow (default: flows/checkout.yaml).

Prints events/s (CPU time of the process: the machine may be shared) through the compiled flow with in-memory state (pre-decoded events, and
from JSON bytes through ingest), and the bytes of serialised state per open instance.
Not a test: run `python benchmarks/engine.py [FLOW] [--orders N]`.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from observer.engine.codec import encode_slot
from observer.engine.core import Engine
from observer.engine.state import Event, KeySlot
from observer.flows.compiled import CompiledFlow
from observer.flows.compiler import load_registry
from observer.ingest import Ingest, SourceRecord

T0 = 1_767_225_600_000


def happy_path(flow: CompiledFlow) -> list[tuple[str, str, int]]:
    """(source, type, offset ms) of each main-path step, on time (10 % of its window)."""
    times: dict[int, int] = {}
    out = []
    for idx in flow.paths[0].steps:
        step = flow.steps[idx]
        anchor = max((times[a] for a in step.anchors if a in times), default=0)
        t = anchor + max(1, (step.within_ms or 1000) // 10)
        times[idx] = t if idx else 0
        src, etype = sorted(step.on)[0]
        out.append((src, etype, times[idx]))
    return out


def sample_value(
    src: str, etype: str, key: str, t: int, flow: CompiledFlow
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A JSON value and headers that the source's selectors can read."""
    source = flow.sources[src]
    value: dict[str, Any] = {
        "total": 99.5,
        "customer": {"email": "ann@example.com"},
        "items": [{"sku": "A1", "qty": 1}],
    }
    headers: dict[str, bytes] = {}
    for sel, v in ((source.type_text, etype), (source.key_text, key), (source.time_text, t)):
        if sel.startswith("value."):
            node = value
            parts = sel.split(".")[1:]
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = v
        elif sel.startswith("header."):
            headers[sel[7:]] = str(v).encode()
    return value, headers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("flow", nargs="?", default="flows/checkout.yaml")
    ap.add_argument("--orders", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    registry = load_registry([args.flow])
    flow = registry.newest_flows()[0]
    engine = Engine(registry)
    path = happy_path(flow)
    n_events = args.orders * len(path)

    # pre-decoded events, interleaved across orders in event-time order
    captures = {sel: None for s in flow.steps for sel, _ in s.captures}
    events: list[Event] = []
    for i in range(args.orders):
        base = T0 + i * 7
        for src, etype, off in path:
            events.append(Event(src, etype, f"o-{i}", f"{etype}-{i}", base + off, captures))
    events.sort(key=lambda e: e.time)

    def run_engine() -> float:
        slots: dict[str, KeySlot] = {}
        gc.disable()
        t = time.process_time()
        for e in events:
            slot = slots.get(e.key)
            if slot is None:
                slot = slots[e.key] = KeySlot(flow.name, e.key)
            engine.apply(slot, e, e.time)
        el = time.process_time() - t
        gc.enable()
        return el

    engine_rates = [n_events / run_engine() for _ in range(args.repeat)]

    # from JSON bytes through ingest
    ingest = Ingest(registry)
    records = []
    for e in events:
        value, headers = sample_value(e.source, e.type, e.key, e.time, flow)
        records.append(
            SourceRecord(
                flow.sources[e.source].topic,
                0,
                len(records),
                e.key.encode(),
                orjson.dumps(value),
                list(headers.items()),
                e.time,
            )
        )

    def run_ingest() -> float:
        slots: dict[str, KeySlot] = {}
        gc.disable()
        t = time.process_time()
        for r in records:
            for fname, ev in ingest.decode(r).events:
                slot = slots.get(ev.key)
                if slot is None:
                    slot = slots[ev.key] = KeySlot(fname, ev.key)
                engine.apply(slot, ev, ev.time)
        el = time.process_time() - t
        gc.enable()
        return el

    ingest_rates = [n_events / run_ingest() for _ in range(args.repeat)]

    # bytes per open instance, mid-flight (half of the main path observed), with real captures
    sizes = []
    for i in range(2000):
        slot = KeySlot(flow.name, f"o-{i}")
        for src, etype, off in path[: max(1, len(path) // 2)]:
            value, headers = sample_value(src, etype, f"o-{i}", T0 + off, flow)
            rec = SourceRecord(
                flow.sources[src].topic,
                0,
                i,
                f"o-{i}".encode(),
                orjson.dumps(value),
                list(headers.items()),
                T0 + off,
            )
            for _, ev in ingest.decode(rec).events:
                engine.apply(slot, ev, ev.time)
        sizes.append(len(encode_slot(slot)))
    encode_us = []
    slot_sample = slot
    t = time.process_time()
    for _ in range(20000):
        encode_slot(slot_sample)
    encode_us.append((time.process_time() - t) / 20000 * 1e6)

    print(
        f"flow: {flow.name} v{flow.version} ({args.flow}), {len(path)} main-path steps, {args.orders} orders, {n_events} events"
    )
    print(
        f"engine only (pre-decoded events):   {statistics.median(engine_rates):>10,.0f} events/s  (runs: {', '.join(f'{r:,.0f}' for r in engine_rates)})"
    )
    print(
        f"ingest + engine (JSON bytes):       {statistics.median(ingest_rates):>10,.0f} events/s  (runs: {', '.join(f'{r:,.0f}' for r in ingest_rates)})"
    )
    print(
        f"state per open instance, mid-flight: median {statistics.median(sizes):.0f} B, max {max(sizes)} B (target <= 200 B)"
    )
    print(f"encode_slot: {encode_us[0]:.2f} µs per slot")


if __name__ == "__main__":
    main()
