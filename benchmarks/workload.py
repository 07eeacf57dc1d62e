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
import heapq
import json
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    REPO,
    create_topics,
    delete_topics,
    kafka_conf,
    log,
    now_ms,
    topics_matching,
)
from observer.engine.effects import Effect, Publish
from observer.flows.compiled import CompiledFlow, CompiledStep
from observer.flows.compiler import load_registry
from observer.ingest import SourceRecord
from observer.replay import Replayer, ReplayRecord
from observer.timefmt import format_time
from observer.topics import Topics

__all__ = [
    "FAULTS",
    "Emit",
    "OrderModel",
    "RecordEncoder",
    "WorkloadFiles",
    "main",
    "order_key",
    "prepare_flow",
    "produce_records",
    "runtime_topics",
]

FAULTS = ("missing", "late", "error")
DEFAULT_FLOW = REPO / "flows" / "checkout.yaml"
RUNTIME_TOPICS = ("alerts", "outcomes", "dlq")


# -- the flow copy ------------------------------------------------------------------------------


@dataclass
class WorkloadFiles:
    """Where a prepared workload lives and what it is called."""

    out: Path
    prefix: str
    flow_dir: Path
    source_topics: dict[str, str]  # source name -> prefixed topic
    action_topics: list[str]
    flow: CompiledFlow
    id_selectors: dict[str, str | None]  # source name -> `id:` selector text (None: default)

    def runtime_topics(self, label: str) -> Topics:
        """The alerts/outcomes/dlq topics of one measurement."""
        return runtime_topics(self.prefix, label)


def runtime_topics(prefix: str, label: str) -> Topics:
    """The alerts/outcomes/dlq topics of one measurement `label` of a run."""
    return Topics(
        alerts=f"{prefix}.{label}.alerts",
        outcomes=f"{prefix}.{label}.outcomes",
        dlq=f"{prefix}.{label}.dlq",
    )


def prepare_flow(
    flow_file: Path, prefix: str, out: Path, webhook_sink: str | None = None
) -> WorkloadFiles:
    """Write `<out>/flow/<name>` = the flow with `<prefix>.` topics; compile it."""
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: comments and layout kept
    docs = list(yaml.load_all(flow_file.read_text()))
    sources: dict[str, str] = {}
    ids: dict[str, str | None] = {}
    actions: set[str] = set()
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        for name, src in (doc.get("sources") or {}).items():
            src["topic"] = f"{prefix}.{src['topic']}"
            sources[name] = src["topic"]
            ids[name] = src.get("id")
            schema = src.get("schema")
            if isinstance(schema, str) and not Path(schema).is_absolute():
                src["schema"] = str((flow_file.parent / schema).resolve())
        for act in (doc.get("actions") or {}).values():
            pub = act.get("publish") if isinstance(act, dict) else None
            if isinstance(pub, dict) and isinstance(pub.get("topic"), str):
                if "{{" not in pub["topic"]:
                    pub["topic"] = f"{prefix}.{pub['topic']}"
                    actions.add(pub["topic"])
                if isinstance(pub.get("schema"), str) and not Path(pub["schema"]).is_absolute():
                    pub["schema"] = str((flow_file.parent / pub["schema"]).resolve())
            hook = act.get("webhook") if isinstance(act, dict) else None
            if webhook_sink and isinstance(hook, dict) and isinstance(hook.get("url"), str):
                path = hook["url"].split("/", 3)[3] if hook["url"].count("/") >= 3 else ""
                hook["url"] = f"{webhook_sink.rstrip('/')}/{path}"
    flow_dir = out / "flow"
    flow_dir.mkdir(parents=True, exist_ok=True)
    target = flow_dir / flow_file.name
    with target.open("w") as f:
        f.write(f"# generated by benchmarks/workload.py from {flow_file} (topics prefixed)\n")
        yaml.dump_all(docs, f)
    registry = load_registry([target])
    flows = registry.newest_flows()
    if len(flows) != 1:
        raise SystemExit(f"{flow_file}: expected one flow, found {len(flows)}")
    return WorkloadFiles(out, prefix, flow_dir, sources, sorted(actions), flows[0], ids)


# -- orders -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Emit:
    """One event of an order: `at` is its event time (ms); `read_at` the replay clock when it
    differs (a record read earlier than its event time suggests)."""

    step: int  # step index, or -1 - error index for an error event
    source: str
    type: str
    at: int
    read_at: int | None = None


def _bound(step: CompiledStep) -> int:
    """How far into its window an on-time step may come (ms): half its window or warn point."""
    if step.within_ms is None:
        return 10_000
    b = step.within_ms if step.warn_ms is None else min(step.within_ms, step.warn_ms)
    return max(1, b // 2)


@dataclass
class OrderModel:
    """Draws the events of one order (pure: the same rng state gives the same order)."""

    flow: CompiledFlow
    missing_step: CompiledStep
    late_step: CompiledStep
    error_index: int
    error_replaces: CompiledStep
    scale: float = 1.0
    _main: tuple[int, ...] = field(init=False)
    _topo_cache: dict[tuple[int, ...], list[tuple[CompiledStep, tuple[int, ...]]]] = field(
        init=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self._main = self.flow.paths[0].steps
        # keep a happy order inside the SLA's warn point (with room to spare)
        sla = self.flow.sla
        if sla is not None:
            budget = 0.8 * (sla.warn_ms if sla.warn_ms is not None else sla.within_ms)
            worst = self._path_times(self._main, 0, lambda s: _bound(s), skip=set())
            longest = max(worst.values(), default=0)
            if longest > budget:
                self.scale = budget / longest

    @classmethod
    def build(
        cls, flow: CompiledFlow, missing: str | None = None, late: str | None = None
    ) -> OrderModel:
        main = [flow.steps[i] for i in flow.paths[0].steps]
        windowed = [s for s in main[1:] if s.within_ms is not None and not s.optional]
        if not windowed:
            raise SystemExit(f"flow {flow.name}: no windowed step to make missing or late")
        m = flow.step_named(missing) if missing else windowed[0]
        with_late = [s for s in windowed if s.if_late.actions or s.if_late.alert is False]
        lt = flow.step_named(late) if late else (with_late[0] if with_late else m)
        if not flow.errors:
            raise SystemExit(f"flow {flow.name}: no `errors:` to inject a failure with")
        err = next((e for e in flow.errors if e.handler.then is not None), flow.errors[0])
        esrc = sorted(err.on)[0][0]
        replaces = next((s for s in main[1:] if any(src == esrc for src, _ in s.on)), m)
        return cls(flow, m, lt, err.index, replaces)

    def _topo(self, steps: Sequence[int]) -> list[tuple[CompiledStep, tuple[int, ...]]]:
        """A path's steps with anchors before dependents (cached); anchors outside the path
        are dropped (the step is anchored at the path's entry)."""
        key = tuple(steps)
        cached = self._topo_cache.get(key)
        if cached is not None:
            return cached
        inside = set(steps)
        order: list[tuple[CompiledStep, tuple[int, ...]]] = []
        done: set[int] = set()
        pending = list(steps)
        while pending:
            for idx in list(pending):
                step = self.flow.steps[idx]
                anchors = tuple(a for a in step.anchors if a in inside)
                if all(a in done for a in anchors):
                    order.append((step, anchors))
                    done.add(idx)
                    pending.remove(idx)
                    break
            else:
                raise SystemExit(f"flow {self.flow.name}: anchors form a cycle")
        self._topo_cache[key] = order
        return order

    def _path_times(
        self,
        steps: Sequence[int],
        entry: int,
        offset: Callable[[CompiledStep], float],
        skip: set[int],
    ) -> dict[int, int]:
        """Event time of each step of a path given an offset rule; steps anchored (directly
        or not) on a skipped step are skipped too (`skip` gains them)."""
        times: dict[int, int] = {}
        for step, anchors in self._topo(steps):
            idx = step.index
            if idx in skip or any(a in skip for a in anchors):
                skip.add(idx)
            elif step.is_start:
                times[idx] = entry
            elif anchors:
                times[idx] = max([times[a] for a in anchors]) + int(offset(step))
            else:
                times[idx] = entry + int(offset(step))
        return times

    def _on_time(self, rng: random.Random) -> Callable[[CompiledStep], float]:
        return lambda s: _bound(s) * self.scale * (0.05 + 0.45 * rng.random())

    def _emits(self, times: dict[int, int], rng: random.Random) -> list[Emit]:
        out = []
        for idx, t in times.items():
            step = self.flow.steps[idx]
            on = sorted(step.on)
            src, typ = on[rng.randrange(len(on))] if len(on) > 1 else on[0]
            out.append(Emit(idx, src, typ, t))
        return out

    def _reaction(self, step: CompiledStep, deadline: int, rng: random.Random) -> list[Emit]:
        """The services answer the observer's commands: the path `if_missing` switches to."""
        then = step.if_missing.then
        if then is None:
            return []
        path = self.flow.paths[then]
        times = self._path_times(path.steps, deadline, self._on_time(rng), skip=set())
        return self._emits(times, rng)

    def order(self, start: int, fault: str | None, rng: random.Random) -> list[Emit]:
        """The events of one order starting at `start`, in no particular order."""
        on_time = self._on_time(rng)
        if fault is None:
            return self._emits(self._path_times(self._main, start, on_time, set()), rng)
        if fault == "missing":
            m = self.missing_step
            skip = {m.index}
            times = self._path_times(self._main, start, on_time, skip)
            anchor = max((times[a] for a in m.anchors), default=start)
            assert m.within_ms is not None
            return self._emits(times, rng) + self._reaction(m, anchor + m.within_ms, rng)
        if fault == "late":
            lt = self.late_step
            assert lt.within_ms is not None
            within = lt.within_ms

            def late_rule(s: CompiledStep) -> float:
                if s.index == lt.index:
                    return within + 1000 + rng.random() * max(0, within // 2 - 1000)
                return on_time(s)

            times = self._path_times(self._main, start, late_rule, set())
            anchor = max((times[a] for a in lt.anchors), default=start)
            emits = self._emits(times, rng)
            return emits + self._reaction(lt, anchor + within, rng)
        if fault == "error":
            r = self.error_replaces
            keep = self._path_times(self._main, start, on_time, {r.index})
            anchor = max((keep[a] for a in r.anchors if a in keep), default=start)
            t_err = anchor + int(on_time(r))  # where the replaced step would have come
            err = self.flow.errors[self.error_index]
            esrc, etyp = sorted(err.on)[0]
            emits = [*self._emits(keep, rng), Emit(-1 - err.index, esrc, etyp, t_err)]
            then = err.handler.then
            if then is not None:
                path = self.flow.paths[then]
                emits += self._emits(self._path_times(path.steps, t_err, on_time, set()), rng)
            return emits
        raise ValueError(f"unknown fault {fault!r}")

    def fault_step(self, fault: str) -> str:
        if fault == "missing":
            return self.missing_step.name
        if fault == "late":
            return self.late_step.name
        err = self.flow.errors[self.error_index]
        return "/".join(f"{s}.{t}" for s, t in sorted(err.on))

    def horizon_ms(self) -> int:
        """An upper bound of how long after its start an order's last event comes."""
        total = 0
        for s in self.flow.steps:
            total += int(s.within_ms or 10_000) * 2
        return total


def order_key(style: str, seed: int, i: int) -> str:
    if style == "uuid":  # a fixed scramble of (seed, i): unique, cheap, looks random
        n = ((i + 1) * 0x9E3779B97F4A7C15F39CC0605CEDC835 + seed * 0x632BE59BD9B4E019) % (1 << 128)
        return str(uuid.UUID(int=n, version=4))
    return f"o-{i}"


def fault_of(i: int, rate: float, kinds: Sequence[str]) -> str | None:
    """Every round(1/rate)-th order (from the middle of each stride) gets a fault, kinds in turn."""
    if rate <= 0 or not kinds:
        return None
    stride = max(1, round(1 / rate))
    if i % stride != stride // 2:
        return None
    return kinds[(i // stride) % len(kinds)]


# -- records ------------------------------------------------------------------------------------


def _fake(selector: str, n: int) -> Any:
    """A plausible value for a captured field, by its name."""
    last = selector.rsplit(".", 1)[-1]
    if last == "items":
        return [{"sku": f"SKU-{n % 977}", "qty": 1 + n % 3, "price": 19.99}]
    if "email" in last:
        return f"customer{n}@example.com"
    if last in ("total", "amount", "price"):
        return round(10 + (n % 9000) / 7, 2)
    if last == "currency":
        return "EUR"
    if last == "carrier":
        return ("DHL", "UPS", "GLS")[n % 3]
    if last == "id" or last.endswith("_id"):
        return f"{last[:3]}-{n:08d}"
    return f"{last}-{n}"


def _set(value: dict[str, Any], parts: Sequence[str], v: Any) -> None:
    node = value
    for p in parts[:-1]:
        nxt = node.get(p)
        nxt = dict(nxt) if isinstance(nxt, dict) else {}  # copy: templates share branches
        node[p] = nxt
        node = nxt
    node[parts[-1]] = v


@dataclass
class _Template:
    """How to build one kind of event (a step or error event of a source) on the wire."""

    topic: str
    static: dict[str, Any]
    static_headers: list[tuple[str, bytes]]
    key_in: tuple[str, tuple[str, ...]]  # ("value", path) | ("header", (name,)) | ("key", ())
    time_in: tuple[str, tuple[str, ...]]
    id_in: tuple[str, tuple[str, ...]] | None


def _where(selector: str) -> tuple[str, tuple[str, ...]]:
    if selector.startswith("value."):
        return "value", tuple(selector.split(".")[1:])
    if selector.startswith("header."):
        return "header", (selector[len("header.") :],)
    return selector, ()  # key | timestamp


class RecordEncoder:
    """Turns an `Emit` of an order into a Kafka record the flow's selectors can read, by
    inverting each selector of its source (`value.a.b` sets a field, `header.X` a header,
    `key` the record key). Values are JSON, padded to about `event_bytes`."""

    def __init__(
        self, files: WorkloadFiles, event_bytes: int = 300, time_format: str = "ms"
    ) -> None:
        self.files = files
        self.flow = files.flow
        self.time_format = time_format
        self.event_bytes = event_bytes
        self._templates: dict[tuple[int, str, str], _Template] = {}

    def _template(self, e: Emit) -> _Template:
        k = (e.step, e.source, e.type)
        t = self._templates.get(k)
        if t is not None:
            return t
        src = self.flow.sources[e.source]
        static: dict[str, Any] = {}
        headers: list[tuple[str, bytes]] = []
        kind, path = _where(src.type_text)
        if kind == "value":
            _set(static, path, e.type)
        elif kind == "header":
            headers.append((path[0], e.type.encode()))
        if e.step >= 0:
            for i, (sel, _) in enumerate(self.flow.steps[e.step].captures):
                ck, cpath = _where(sel)
                if ck == "value":
                    _set(static, cpath, _fake(sel, 1000 + i))
                elif ck == "header":
                    headers.append((cpath[0], str(_fake(sel, i)).encode()))
        static.setdefault("service", f"{e.source}-service")
        id_sel = self.files.id_selectors.get(e.source)
        t = _Template(
            src.topic,
            static,
            headers,
            _where(src.key_text),
            _where(src.time_text),
            _where(id_sel) if id_sel else None,
        )
        # pad to about event_bytes with a note field (a real event carries more than its ids)
        sample, _, _ = self._build(t, "x" * 36, 1_767_225_600_000, "x" * 40)
        pad = self.event_bytes - len(sample) - len(b',"note":""')
        if pad > 0:
            t.static["note"] = "lorem ipsum dolor sit amet " * (pad // 27) + "x" * (pad % 27)
        self._templates[k] = t
        return t

    def _time(self, ms: int) -> Any:
        return ms if self.time_format == "ms" else format_time(ms)

    def _build(
        self, t: _Template, key: str, at: int, event_id: str
    ) -> tuple[bytes, list[tuple[str, bytes]], bytes]:
        value = dict(t.static)
        headers = list(t.static_headers)
        for where, datum in ((t.key_in, key), (t.time_in, self._time(at)), (t.id_in, event_id)):
            if where is None:
                continue
            kind, path = where
            if kind == "value":
                if len(path) == 1:
                    value[path[0]] = datum
                else:
                    _set(value, path, datum)
            elif kind == "header":
                headers.append((path[0], str(datum).encode()))
        return orjson.dumps(value), headers, key.encode()

    def encode(
        self, e: Emit, key: str, event_id: str
    ) -> tuple[str, bytes, bytes, list[tuple[str, bytes]], int]:
        """(topic, key, value, headers, timestamp ms) of one event."""
        t = self._template(e)
        value, headers, kb = self._build(t, key, e.at, event_id)
        return t.topic, kb, value, headers, e.at


# -- expected deviations ------------------------------------------------------------------------


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


# -- producing ----------------------------------------------------------------------------------


def producer_config(bootstrap: str, live: bool = False) -> dict[str, Any]:
    return kafka_conf(
        bootstrap,
        **{
            "enable.idempotence": True,  # keeps every partition in produce (= event time) order
            "linger.ms": 2 if live else 50,
            "batch.size": 1_000_000,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "none",
        },
    )


def produce_records(
    bootstrap: str,
    records: Iterator[tuple[str, bytes, bytes, list[tuple[str, bytes]], int]],
    live: bool = False,
) -> int:
    """Produce as fast as librdkafka takes them; returns the count. Raises on delivery errors."""
    from confluent_kafka import KafkaError, Producer

    p = Producer(producer_config(bootstrap, live))
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    n = 0
    produce, poll = p.produce, p.poll
    for topic, key, value, headers, ts in records:
        while True:
            try:
                produce(
                    topic,
                    value,
                    key,
                    headers=cast(Any, headers),
                    timestamp=ts,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                poll(0.05)
        n += 1
        if n & 1023 == 0:
            poll(0)
            if errors:
                raise RuntimeError(f"delivery failed: {errors[0]}")
    remaining = p.flush(120)
    if remaining or errors:
        raise RuntimeError(f"{remaining} records not delivered; first error: {errors[:1]}")
    return n


def generate(
    model: OrderModel,
    enc: RecordEncoder,
    orders: int,
    t0: int,
    span_ms: int,
    seed: int,
    rate: float,
    kinds: Sequence[str],
    key_style: str,
    faults_out: dict[str, list[str]],
) -> Iterator[tuple[str, bytes, bytes, list[tuple[str, bytes]], int]]:
    """Every event of every order, in event-time order (a heap of the orders in flight)."""
    heap: list[tuple[int, int, int, str, Emit]] = []
    step_ms = span_ms / max(1, orders)
    rng = random.Random(seed)
    for i in range(orders):
        start = t0 + int(i * step_ms)
        while heap and heap[0][0] <= start:
            _t, _, n, key, e = heapq.heappop(heap)
            yield enc.encode(e, key, f"{key}/{n}")
        fault = fault_of(i, rate, kinds)
        key = order_key(key_style, seed, i)
        if fault is not None:
            faults_out[fault].append(key)
        for n, e in enumerate(model.order(start, fault, rng)):
            heapq.heappush(heap, (e.at, i * 64 + n, n, key, e))
    while heap:
        _t, _, n, key, e = heapq.heappop(heap)
        yield enc.encode(e, key, f"{key}/{n}")


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
