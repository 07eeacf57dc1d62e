""" "Where is my order?": the view of one instance and of the deployed flows, for `/instances`,
`/flows` and `observer status`. Building the view is pure; `InstanceQuery` reads through a
`SlotReader` (never through the consumer loop).
"""

from __future__ import annotations

from typing import Any

import orjson

from observer.engine.codec import decode_slot
from observer.engine.core import Engine, VersionUnavailable
from observer.engine.state import (
    ALIAS_CONFLICT,
    DEVIATION_KINDS,
    F_LATE,
    F_MISSING,
    F_OUT_OF_ORDER,
    F_WARNED,
    KeySlot,
)
from observer.engine.timers import TimerKind
from observer.flows.aliases import alias_flow
from observer.flows.compiled import CompiledFlow
from observer.flows.registry import FlowRegistry
from observer.masking import mask_webhook_url
from observer.runtime.ports import SlotReader
from observer.timefmt import format_duration, format_time
from observer.topics import Topics

__all__ = ["InstanceQuery", "describe_flows", "describe_instance", "format_instance"]

# What the API calls each timer kind (the names of the deviations they decide, where they do).
TIMER_KINDS: dict[TimerKind, str] = {
    TimerKind.WARN: "warning",
    TimerKind.MISSING: "missing",
    TimerKind.SLA_WARN: "sla_warning",
    TimerKind.SLA_BREACH: "sla_breach",
    TimerKind.EXPIRE: "expire",
    TimerKind.RETAIN: "retain",
    TimerKind.ORPHAN: "orphan",
    TimerKind.SLO: "slo",
}


def _t(ms: int | None) -> str | None:
    return None if ms is None else format_time(ms)


def _dur(ms: int | None) -> str | None:
    return None if ms is None else format_duration(ms)


def _history(entries: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for raw in entries:
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(d, dict):
            if isinstance(d.get("webhook"), str):  # entries written before URLs were masked
                d["webhook"] = mask_webhook_url(d["webhook"])
            out.append(d)
    return out


def _steps(engine: Engine, flow: CompiledFlow, slot: KeySlot) -> list[dict[str, Any]]:
    inst = slot.instance
    assert inst is not None
    out = []
    for step in flow.steps:
        observed = inst.observed.get(step.index)
        on_path = step.path == inst.path
        if not (step.path == 0 or on_path or observed is not None):
            continue
        flags = inst.flags.get(step.index, 0)
        deadline = engine.deadline(flow, inst, step)
        if observed is not None:
            status = "observed"
        elif not on_path:
            status = "cancelled"
        elif not inst.open:
            status = "not observed"
        elif deadline is None and step.within_ms is not None:
            status = "not armed"  # its anchors are not observed yet
        else:
            status = "waiting"
        out.append(
            {
                "step": step.name,
                "path": flow.paths[step.path].name,
                "status": status,
                "observed_at": _t(observed),
                "deadline": _t(deadline),
                "optional": step.optional,
                "late": bool(flags & F_LATE),
                "missing": bool(flags & F_MISSING),
                "warned": bool(flags & F_WARNED),
                "out_of_order": bool(flags & F_OUT_OF_ORDER),
            }
        )
    return out


def describe_instance(
    engine: Engine, flow_name: str, key: str, state: bytes | None, history: list[bytes]
) -> dict[str, Any] | None:
    """The view of one (flow, key); None when nothing is known about it."""
    entries = _history(history)
    if state is None and not entries:
        return None
    slot = decode_slot(flow_name, key, state) if state is not None else KeySlot(flow_name, key)
    try:
        flow = engine.flow_of(slot)
    except VersionUnavailable as exc:
        return _unavailable(slot, entries, exc)
    inst = slot.instance
    view: dict[str, Any] = {"flow": flow_name, "key": key}
    if flow.aliases:  # the alias values it registered (aliases: correlation by a second id)
        view["aliases"] = {
            flow.aliases[i].name: value
            for i, (value, status) in sorted((inst.aliases if inst else {}).items())
            if status != ALIAS_CONFLICT
        }
    if inst is None:
        view.update(
            state="buffering" if slot.buffer else "unknown", version=None, outcome=None, path=None
        )
        view.update(started_at=None, ended_at=None, duration_ms=None, steps=[])
    else:
        view.update(
            state="open" if inst.open else "ended",
            version=inst.version,
            outcome=inst.outcome,
            path=flow.paths[inst.path].name,
            started_at=_t(inst.started_at),
            ended_at=_t(inst.ended_at),
            duration_ms=None if inst.ended_at is None else inst.ended_at - inst.started_at,
            steps=_steps(engine, flow, slot),
        )
    view["pending"] = [
        {
            "kind": TIMER_KINDS[t.kind],
            "step": flow.steps[t.step].name if t.step >= 0 else None,
            "due": _t(t.due),
        }
        for t in engine.timers(slot)
    ]
    detected = [e for e in entries if e.get("what") == "deviation"]
    deviations = []
    for kind, step_idx in inst.deviations if inst is not None else []:
        name = DEVIATION_KINDS[kind]
        step = flow.steps[step_idx].name if step_idx >= 0 else None
        at = None
        for j, e in enumerate(detected):
            if e.get("detail") == name and e.get("step") == step:
                at = e.get("at")
                del detected[j]
                break
        deviations.append({"kind": name, "step": step, "detected_at": _t(at)})
    deviations += [
        {"kind": e.get("detail"), "step": e.get("step"), "detected_at": _t(e.get("at"))}
        for e in detected
    ]
    view["deviations"] = deviations
    view["actions"] = [
        {k: v for k, v in {**e, "at": _t(e.get("at"))}.items() if k != "what"}
        for e in entries
        if e.get("what") == "published"
    ]
    view["buffered"] = [
        {
            "source": b.event.source,
            "type": b.event.type,
            "id": b.event.id,
            "time": _t(b.event.time),
            "read_at": _t(b.read_at),
        }
        for b in slot.buffer
    ]
    view.update(_guarded(entries))
    view["history"] = [{**e, "at": _t(e.get("at"))} for e in entries]
    return view


def _guarded(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Guardrails (contract §7), from the history: the instance's actions still held (held,
    not released or dropped since) and the incidents that held or silenced any of them."""
    held: dict[str, dict[str, Any]] = {}
    incidents: list[str] = []
    for e in entries:
        what, oid = e.get("what"), e.get("observer_id")
        if what not in ("held", "released", "dropped", "suppressed") or not isinstance(oid, str):
            continue
        inc = e.get("incident")
        if isinstance(inc, str) and inc not in incidents:
            incidents.append(inc)
        if what == "held":
            held[oid] = {
                "observer_id": oid,
                "action": e.get("action"),
                "reason": e.get("reason"),
                "incident": inc,
                "held_at": _t(e.get("at")),
            }
        elif what != "suppressed":
            held.pop(oid, None)
    return {"held": list(held.values()), "incidents": incidents}


def _unavailable(
    slot: KeySlot, entries: list[dict[str, Any]], exc: VersionUnavailable
) -> dict[str, Any]:
    """The view of an instance whose version is not deployed: what the state says without
    its flow, and the problem."""
    inst = slot.instance
    assert inst is not None
    return {
        "flow": slot.flow,
        "key": slot.key,
        "state": "open" if inst.open else "ended",
        "version": inst.version,
        "outcome": inst.outcome,
        "path": None,
        "started_at": _t(inst.started_at),
        "ended_at": _t(inst.ended_at),
        "duration_ms": None if inst.ended_at is None else inst.ended_at - inst.started_at,
        "steps": [],
        "pending": [],
        "deviations": [],
        "actions": [
            {k: v for k, v in {**e, "at": _t(e.get("at"))}.items() if k != "what"}
            for e in entries
            if e.get("what") == "published"
        ],
        "buffered": [],
        "history": [{**e, "at": _t(e.get("at"))} for e in entries],
        "problem": str(exc),
    }


def describe_flows(registry: FlowRegistry) -> list[dict[str, Any]]:
    """Deployed flows: every version with its sources, paths and steps."""
    out = []
    for name in registry.names():
        newest = registry.newest(name).version
        versions = []
        for v in registry.versions(name):
            flow = registry.get(name, v)
            assert flow is not None
            if flow.aliases:  # aliases: only for flows that have them (the view stays as it was)
                extra: dict[str, Any] = {"aliases": _describe_aliases(flow)}
            else:
                extra = {}
            versions.append(
                {
                    "version": v,
                    "file": flow.file,
                    "sources": {s.name: s.topic for s in flow.sources.values()},
                    "paths": [
                        {
                            "path": p.name,
                            "outcome": p.outcome,
                            "steps": [
                                {
                                    "step": flow.steps[i].name,
                                    "on": sorted(f"{src}.{typ}" for src, typ in flow.steps[i].on),
                                    "after": [flow.steps[a].name for a in flow.steps[i].anchors],
                                    "within": _dur(flow.steps[i].within_ms),
                                    "optional": flow.steps[i].optional,
                                }
                                for i in p.steps
                            ],
                        }
                        for p in flow.paths
                    ],
                    "sla": None if flow.sla is None else format_duration(flow.sla.within_ms),
                    "buffer": format_duration(flow.buffer_ms),
                    "retain": format_duration(flow.retain_ms),
                    "expire": format_duration(flow.expire_ms),
                    **extra,
                }
            )
        out.append({"flow": name, "newest": newest, "versions": versions})
    return out


def _describe_aliases(flow: CompiledFlow) -> dict[str, Any]:
    """Each alias: the events that register it, its selector, the sources that read it."""
    return {
        a.name: {
            "from": sorted(f"{src}.{typ}" for src, typ in a.on),
            "value": a.value,
            "via": sorted(s.name for s in flow.sources.values() if s.via == a.name),
        }
        for a in flow.aliases
    }


def format_instance(view: dict[str, Any]) -> str:
    """The view as readable text (what `observer status` prints)."""
    lines = []
    via = view.get("via")
    if via:
        lines.append(f"via {via['alias']} {via['value']}")
    head = f"{view['flow']} {view['key']}: {view['state']}"
    if view.get("version") is not None:
        path = f", path {view['path']}" if view.get("path") else ""
        head += f" (version {view['version']}{path})"
    if view.get("outcome"):
        head += f", outcome {view['outcome']}"
    lines.append(head)
    if view.get("problem"):
        lines.append(f"  problem: {view['problem']}")
    if view.get("started_at"):
        line = f"  started {view['started_at']}"
        if view.get("ended_at"):
            line += f", ended {view['ended_at']} after {format_duration(view['duration_ms'])}"
        lines.append(line)
    if view.get("aliases"):
        lines.append("  aliases: " + ", ".join(f"{k} {v}" for k, v in view["aliases"].items()))
    if view["steps"]:
        lines.append("steps:")
        width = max(len(s["step"]) for s in view["steps"])
        for s in view["steps"]:
            parts = [s["status"]]
            if s["observed_at"]:
                parts.append(f"at {s['observed_at']}")
            if s["deadline"]:
                parts.append(f"deadline {s['deadline']}")
            marks = [m for m in ("late", "missing", "warned", "out_of_order") if s[m]]
            if marks:
                parts.append("(" + ", ".join(marks) + ")")
            where = "" if s["path"] == "main" else f" [{s['path']}]"
            lines.append(f"  {s['step']:<{width}}{where}  " + " ".join(parts))
    if view["pending"]:
        lines.append("pending deadlines:")
        for p in view["pending"]:
            lines.append(f"  {p['due']}  {p['kind']}" + (f" {p['step']}" if p["step"] else ""))
    if view["deviations"]:
        lines.append("deviations:")
        for d in view["deviations"]:
            lines.append(
                f"  {d['kind']}"
                + (f" {d['step']}" if d["step"] else "")
                + (f"  detected {d['detected_at']}" if d["detected_at"] else "")
            )
    if view["actions"]:
        lines.append("published:")
        for a in view["actions"]:
            target = a.get("webhook") or a.get("topic")
            what = a.get("category", "")
            if a.get("kind"):
                what += f" {a['kind']}" + (f" {a['step']}" if a.get("step") else "")
            if a.get("outcome"):
                what += f" {a['outcome']}"
            lines.append(f"  {a['at']}  {what} -> {target}  observer-id {a.get('observer_id')}")
    if view.get("held"):
        lines.append("held actions (observer actions list|release|drop):")
        for h in view["held"]:
            why = h["reason"] + (f" {h['incident']}" if h.get("incident") else "")
            lines.append(f"  {h['held_at']}  {h['action']} ({why})  observer-id {h['observer_id']}")
    if view.get("incidents"):
        lines.append("incidents: " + ", ".join(view["incidents"]))
    if view["buffered"]:
        lines.append("early events buffered:")
        for b in view["buffered"]:
            lines.append(
                f"  {b['time']}  {b['source']}.{b['type']} id {b['id']} (read {b['read_at']})"
            )
    return "\n".join(lines)


class InstanceQuery:
    """Answers `/instances` and `/flows` from the store through a read-only `SlotReader`."""

    def __init__(
        self, registry: FlowRegistry, reader: SlotReader, topics: Topics | None = None
    ) -> None:
        self.registry = registry
        self.reader = reader
        self.engine = Engine(registry, topics or Topics())

    def deploy(self, registry: FlowRegistry) -> None:
        """Answer from a new deployment's flows (called from the loop's thread; the two
        references are swapped whole, a request in flight may use the previous ones)."""
        self.engine = Engine(registry, self.engine.topics)
        self.registry = registry

    def instance(self, flow: str, key: str, via: str | None = None) -> dict[str, Any] | None:
        """The view of (flow, key); None if the flow is not deployed or nothing is stored.
        With `via` (an alias name), `key` is a value of that alias: the view of the instance
        that holds it (with `via`: the alias and the value), or, while nobody does, of the
        events that came via it (state `buffering`)."""
        if flow not in self.registry.names():
            return None
        if via is None:
            state, history = self.reader.read(flow, key)
            return describe_instance(self.engine, flow, key, state, history)
        if not any(f.alias_named(via) for f in self._versions(flow)):
            return None
        name = alias_flow(flow, via)
        state, history = self.reader.read(name, key)
        slot = decode_slot(name, key, state) if state is not None else None
        found = {"alias": via, "value": key}
        if slot is not None and slot.hold is not None:
            holder = slot.hold.key
            state, history = self.reader.read(flow, holder)
            view = describe_instance(self.engine, flow, holder, state, history)
        else:
            view = describe_instance(self.engine, name, key, state, history)
            if view is not None:
                view["flow"] = flow
        if view is not None:
            view["via"] = found
        return view

    def _versions(self, flow: str) -> list[CompiledFlow]:
        registry = self.registry
        return [f for v in registry.versions(flow) if (f := registry.get(flow, v)) is not None]

    def flows(self) -> list[dict[str, Any]]:
        return describe_flows(self.registry)
