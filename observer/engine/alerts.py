"""What a deviation or an ending publishes: the alert, the handler's actions, the outcome record.

Pure rendering: a `Deviation` (what the state machine decided) becomes `Signal` and `Publish`
effects with deterministic ids; action templates see the context built by `template_context`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from observer.engine.effects import DeviationRef, Effect, Publish, Signal
from observer.engine.ids import observer_id
from observer.engine.state import ALIAS_CONFLICT, DEVIATION_KINDS, InstanceState
from observer.flows.compiled import CompiledAction, CompiledFlow, CompiledHandler, CompiledStep
from observer.timefmt import format_duration, format_time

__all__ = ["Deviation", "deviation_effects", "outcome_effects", "template_context"]

_DEFAULT_SEVERITY = {
    "missing": "critical",
    "error": "critical",
    "sla_breach": "critical",
    "orphaned": "critical",
}


@dataclass(slots=True)
class Deviation:
    """A deviation the state machine detected (times in ms)."""

    kind: str  # one of DEVIATION_KINDS
    step: CompiledStep | None
    deadline: int | None
    observed_at: int | None
    trigger: str  # the triggering event's id or timer: part of the records' ids
    handler: CompiledHandler | None  # None: recorded only, never alerted
    detail: str = ""  # event type (error, orphaned) or anchor name (out_of_order)
    # late by arrival: the watermark at observation minus the deadline (None: by event time)
    late_by: int | None = None
    # aliases: fields added to the alert record and the template's `deviation`
    extra: Mapping[str, Any] | None = None
    source: str | None = None  # correlation health: the source of the event concerned
    at: int | None = None  # its time for the guardrails (DeviationRef.at; None: `now`)


def deviation_effects(
    flow: CompiledFlow,
    key: str,
    inst: InstanceState | None,
    dev: Deviation,
    now: int,
    alerts_topic: str,
) -> list[Effect]:
    """The deviation's signal, its alert (unless the handler turns it off) and its handler's
    actions in order. `inst` is None for an orphaned event (no instance, the newest version)."""
    version = flow.version if inst is None else inst.version
    step_name = dev.step.name if dev.step else None
    out: list[Effect] = [
        Signal("deviation", flow.name, version, key, dev.kind, step_name, now, source=dev.source)
    ]
    if dev.kind == "out_of_order" and dev.handler is None:
        return out  # recorded only
    handler = dev.handler
    late_by = (
        dev.late_by
        if dev.late_by is not None
        else dev.observed_at - dev.deadline
        if dev.kind == "late" and dev.deadline is not None and dev.observed_at is not None
        else None
    )
    deviation_ctx = {
        "kind": dev.kind,
        "step": step_name,
        "deadline": format_time(dev.deadline) if dev.deadline is not None else None,
        "observed_at": format_time(dev.observed_at) if dev.observed_at is not None else None,
        "late_by": format_duration(late_by) if late_by is not None else None,
        "late_by_ms": late_by,
    }
    if dev.extra:
        deviation_ctx.update(dev.extra)
    ctx = template_context(flow, key, version, inst, now, deviation_ctx)
    severity = (handler.severity if handler else None) or _DEFAULT_SEVERITY.get(dev.kind, "warning")
    summary = None
    if handler is not None and handler.summary is not None:
        rendered = handler.summary(ctx)
        summary = rendered if isinstance(rendered, str) else str(rendered)
    if summary is None:
        summary = _default_summary(flow, key, dev, deviation_ctx)
    alert = {
        "flow": flow.name,
        "version": version,
        "key": key,
        "kind": dev.kind,
        "step": step_name,
        "severity": severity,
        "deadline": deviation_ctx["deadline"],
        "observed_at": deviation_ctx["observed_at"],
        "detected_at": format_time(now),
        "late_by_ms": late_by,
        "summary": summary,
    }
    if dev.extra:
        alert.update(dev.extra)
    base = (flow.name, version, key, dev.trigger, step_name)
    alert_id = observer_id(*base, f"alert:{dev.kind}")
    ref = DeviationRef(dev.kind, step_name, version, now if dev.at is None else dev.at, alert_id)
    if handler is None or handler.alert:
        p = Publish("alert", alerts_topic, key, alert, (("observer-id", alert_id),), alert_id)
        p.deviation = ref
        out.append(p)
    if handler is None:
        return out
    for i, action in enumerate(handler.actions):
        if action.kind == "alert":
            continue
        oid = observer_id(*base, f"action:{dev.kind}:{i}:{action.name}")
        p = _action(action, key, alert, ctx, oid)
        p.deviation, p.action = ref, action.name
        out.append(p)
    return out


def _action(
    action: CompiledAction, key: str, alert: dict[str, Any], ctx: Mapping[str, Any], oid: str
) -> Publish:
    """One handler action: a webhook POST of the alert, or a record rendered from templates."""
    if action.kind == "webhook":
        copy = dict(alert)
        if action.severity is not None:
            copy["severity"] = action.severity
        return Publish("webhook", None, key, copy, (("observer-id", oid),), oid, webhook=action.url)
    assert action.topic is not None and action.value is not None
    topic = action.topic(ctx)
    rkey = action.key(ctx) if action.key is not None else None
    headers = action.headers(ctx) if action.headers is not None else {}
    hdrs = (
        *tuple((str(k), _header_text(v)) for k, v in headers.items()),
        ("observer-id", oid),
    )
    return Publish(
        "action",
        str(topic),
        None if rkey is None else _header_text(rkey),
        action.value(ctx),
        hdrs,
        oid,
        avro_schema=action.avro_schema,
        subject=action.subject,  # issue 16: the Confluent wire format (added by the runtime)
    )


def outcome_effects(
    flow: CompiledFlow, key: str, inst: InstanceState, trigger: str, now: int, outcomes_topic: str
) -> list[Effect]:
    """The outcome record and the `ended` signal of an instance that just ended."""
    assert inst.outcome is not None and inst.ended_at is not None
    ended_at = inst.ended_at
    steps = {flow.steps[i].name: format_time(t) for i, t in sorted(inst.observed.items())}
    record = {
        "flow": flow.name,
        "version": inst.version,
        "key": key,
        "outcome": inst.outcome,
        "started_at": format_time(inst.started_at),
        "ended_at": format_time(ended_at),
        "duration_ms": ended_at - inst.started_at,
        "steps": steps,
        "deviations": [DEVIATION_KINDS[k] for k, _ in inst.deviations],
    }
    if flow.aliases:
        record["aliases"] = _aliases(flow, inst)
    oid = observer_id(flow.name, inst.version, key, trigger, None, "outcome")
    duration = ended_at - inst.started_at
    return [
        Publish("outcome", outcomes_topic, key, record, (("observer-id", oid),), oid),
        Signal("ended", flow.name, inst.version, key, inst.outcome, None, now, duration),
    ]


def template_context(
    flow: CompiledFlow,
    key: str,
    version: int,
    inst: InstanceState | None,
    now: int,
    deviation: Mapping[str, Any],
) -> dict[str, Any]:
    """What action and summary templates see: key, flow, version, now, the instance's start,
    each observed step's time and captured values, the deviation, and the key by its name."""
    steps: dict[str, Any] = {}
    if inst is not None:
        captured = inst.captured
        for idx, t in inst.observed.items():
            data: dict[str, Any] = {"time": format_time(t)}
            step = flow.steps[idx]
            values = captured.get(idx)
            if values:
                for parts, value in zip(step.capture_parts, values, strict=False):
                    _nest(data, parts, value)
            steps[step.name] = data
    ctx: dict[str, Any] = {
        "key": key,
        "flow": flow.name,
        "version": version,
        "now": format_time(now),
        "instance": {"started_at": format_time(inst.started_at) if inst else None},
        "steps": steps,
        "deviation": deviation,
    }
    if flow.aliases:
        ctx["aliases"] = _aliases(flow, inst)
    ctx[flow.key_name] = key
    return ctx


def _aliases(flow: CompiledFlow, inst: InstanceState | None) -> dict[str, str]:
    """{alias: value} of the values the instance registered and was not refused."""
    if inst is None or not inst.aliases:
        return {}
    names = flow.aliases
    return {
        names[i].name: value
        for i, (value, status) in sorted(inst.aliases.items())
        if status != ALIAS_CONFLICT
    }


def _nest(target: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    node = target
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def _header_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return ""
    return (
        orjson.dumps(v).decode()
        if isinstance(v, dict | list)
        else (str(v).lower() if isinstance(v, bool) else str(v))
    )


def _default_summary(flow: CompiledFlow, key: str, dev: Deviation, d: Mapping[str, Any]) -> str:
    who = f"{flow.name} {key}"
    step = dev.step.name if dev.step else ""
    match dev.kind:
        case "missing":
            return f"{who}: step '{step}' missing (deadline {d['deadline']})"
        case "warning":
            return f"{who}: step '{step}' not observed yet (deadline {d['deadline']})"
        case "late":
            return f"{who}: step '{step}' late by {d['late_by']}"
        case "error":
            return f"{who}: error event {dev.detail}"
        case "sla_warning":
            return f"{who}: SLA deadline {d['deadline']} approaching"
        case "sla_breach":
            return f"{who}: SLA breached (deadline {d['deadline']})"
        case "out_of_order":
            return f"{who}: step '{step}' happened before its anchor '{dev.detail}'"
        case "alias_conflict":
            return (
                f"{who}: alias {d['alias']} {d['alias_value']} is held by {d['held_by']}, "
                "not registered"
            )
        case _ if d.get("alias"):
            return (
                f"{flow.name} {d['alias']} {key}: {dev.detail} event came via a value no instance "
                f"registered (buffer ran out {d['deadline']})"
            )
        case _:
            return f"{who}: {dev.detail} event never matched an instance (buffer ran out {d['deadline']})"
