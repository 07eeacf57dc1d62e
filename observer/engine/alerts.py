"""What a deviation or an ending publishes: the alert, the handler's actions, the outcome record.

Pure rendering: a `Deviation` (what the state machine decided) becomes `Signal` and `Publish`
effects with deterministic ids; action templates see the context built by `template_context`.
An action that cannot be carried out (`actions.py`) is listed in the alert's `action_errors`
and dead-lettered; records are kept within their topic's size limit (`Topics.limits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from observer.engine.actions import ActionFailed, action_dead_letter, publish_action
from observer.engine.budget import DROPPED
from observer.engine.effects import DeviationRef, Effect, Publish, Signal
from observer.engine.ids import observer_id
from observer.engine.state import ALIAS_CONFLICT, DEVIATION_KINDS, InstanceState
from observer.errors import RenderError
from observer.flows.compiled import CompiledAction, CompiledFlow, CompiledHandler, CompiledStep
from observer.flows.templates import not_kept
from observer.limits import MAX_CAPTURE_BYTES
from observer.record_size import header_bytes, record_bytes
from observer.timefmt import format_duration, format_time
from observer.topics import Topics

__all__ = ["Deviation", "deviation_effects", "outcome_effects", "template_context"]

_DEFAULT_SEVERITY = {
    "missing": "critical",
    "error": "critical",
    "sla_breach": "critical",
    "orphaned": "critical",
}
_CUT = "… (truncated)"  # the end of a summary cut to fit its alert into the alerts topic
# bytes of an alert or outcome record besides what `_alert_record` / `_outcome_record` count
_FIXED = 600


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


def _deviation_context(dev: Deviation, step_name: str | None) -> dict[str, Any]:
    """What templates see as `deviation` (and the alert record shows of it)."""
    late_by = (
        dev.late_by
        if dev.late_by is not None
        else dev.observed_at - dev.deadline
        if dev.kind == "late" and dev.deadline is not None and dev.observed_at is not None
        else None
    )
    ctx: dict[str, Any] = {
        "kind": dev.kind,
        "step": step_name,
        "deadline": format_time(dev.deadline) if dev.deadline is not None else None,
        "observed_at": format_time(dev.observed_at) if dev.observed_at is not None else None,
        "late_by": format_duration(late_by) if late_by is not None else None,
        "late_by_ms": late_by,
    }
    if dev.extra:
        ctx.update(dev.extra)
    return ctx


def deviation_effects(
    flow: CompiledFlow,
    key: str,
    inst: InstanceState | None,
    dev: Deviation,
    now: int,
    topics: Topics,
) -> list[Effect]:
    """The deviation's signal, its alert (unless the handler turns it off) and its handler's
    actions in order. `inst` is None for an orphaned event (no instance, the newest version).
    An action that cannot be carried out stops neither the others nor the alert: the alert
    lists it under `action_errors`, and its dead letter takes its place."""
    version = flow.version if inst is None else inst.version
    step_name = dev.step.name if dev.step else None
    out: list[Effect] = [
        Signal("deviation", flow.name, version, key, dev.kind, step_name, now, source=dev.source)
    ]
    if dev.kind == "out_of_order" and dev.handler is None:
        return out  # recorded only
    handler = dev.handler
    deviation_ctx = _deviation_context(dev, step_name)
    late_by = deviation_ctx["late_by_ms"]
    ctx = template_context(flow, key, version, inst, now, deviation_ctx)
    severity = (handler.severity if handler else None) or _DEFAULT_SEVERITY.get(dev.kind, "warning")
    base = (flow.name, version, key, dev.trigger, step_name)
    rendered = _render_actions(handler, ctx, base, dev.kind, topics) if handler else []
    summary = next((r.text for _, _, _, r in rendered if type(r) is _Summary), None)
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
        "summary": _default_summary(flow, key, dev, deviation_ctx) if summary is None else summary,
    }
    if dev.extra:
        alert.update(dev.extra)
    errors = [{"action": a.name, "error": r} for _, a, _, r in rendered if type(r) is str]
    if errors:
        alert["action_errors"] = errors
    alert_id = observer_id(*base, f"alert:{dev.kind}")
    ref = DeviationRef(dev.kind, step_name, version, now if dev.at is None else dev.at, alert_id)
    if handler is None or handler.alert:
        p = _alert_record(alert, key, alert_id, topics)
        p.deviation = ref
        out.append(p)
    for i, action, oid, result in rendered:
        if type(result) is str:
            dead_id = observer_id(*base, f"dlq:{dev.kind}:{i}:{action.name}")
            out.append(
                action_dead_letter(flow.name, version, key, action.name, result, dead_id, topics)
            )
            note = f"{action.name}: {result}"
            out.append(Signal("action_error", flow.name, version, key, note, step_name, now))
            continue
        if action.kind == "webhook":
            p = _webhook(action, key, alert, oid)
        elif type(result) is Publish:
            p = result
        else:
            continue
        p.deviation, p.action = ref, action.name
        out.append(p)
    return out


class _Summary:
    """The summary the handler's first `alert:` action rendered."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


# (index, action, observer-id, result): see `_render_actions`
_Rendered = tuple[int, CompiledAction, str, Publish | _Summary | str | None]


def _render_actions(
    handler: CompiledHandler,
    ctx: Mapping[str, Any],
    base: tuple[str, int, str, str, str | None],
    kind: str,
    topics: Topics,
) -> list[_Rendered]:
    """Each action of the handler, in order, with its result: the record of a `publish:`,
    the summary of the first `alert:` (None for the other alerts and for webhooks, whose
    record is the alert), or the text of why the action cannot be carried out."""
    out: list[_Rendered] = []
    alert_seen = False
    for i, action in enumerate(handler.actions):
        oid = observer_id(*base, f"action:{kind}:{i}:{action.name}")
        result: Publish | _Summary | str | None = None
        try:
            if action.kind == "publish":
                result = publish_action(action, ctx, oid, topics.limits)
            elif action.kind == "alert" and not alert_seen:  # the first `alert:` action wins
                alert_seen = True
                if action.summary is not None:
                    text = action.summary(ctx)
                    result = _Summary(text if isinstance(text, str) else str(text))
        except (ActionFailed, RenderError) as exc:
            result = str(exc)
        out.append((i, action, oid, result))
    return out


def _webhook(action: CompiledAction, key: str, alert: dict[str, Any], oid: str) -> Publish:
    """A webhook action: a POST of (a copy of) the alert record."""
    copy = dict(alert)
    if action.severity is not None:
        copy["severity"] = action.severity
    return Publish("webhook", None, key, copy, (("observer-id", oid),), oid, webhook=action.url)


def _alert_record(alert: dict[str, Any], key: str, oid: str, topics: Topics) -> Publish:
    """The alert record within its topic's limit: a summary that would make it larger is cut
    to fit and ends with `_CUT`. Measured only when a rough bound says it may not fit (JSON
    writes a character in at most 6 bytes)."""
    topic = topics.alerts
    limit = topics.limits.of(topic)
    headers = (("observer-id", oid),)
    errors = alert.get("action_errors")
    rough = _FIXED + 12 * len(key) + 6 * len(alert["summary"])
    if errors:
        rough += sum(6 * (len(e["action"]) + len(e["error"])) + 30 for e in errors)
    if rough <= limit:
        return Publish("alert", topic, key, alert, headers, oid)
    key_len = len(key.encode("utf-8", "surrogatepass"))
    while True:
        encoded = orjson.dumps(alert)
        over = record_bytes(key_len, len(encoded), header_bytes(headers)) - limit
        summary: str = alert["summary"]
        if over <= 0:
            return Publish("alert", topic, key, alert, headers, oid, encoded=encoded)
        if summary != _CUT:
            kept = summary.removesuffix(_CUT)
            size = len(orjson.dumps(kept))  # what the summary takes (chars take 1 to 6 bytes)
            ratio = max(size - over - 3 * len(_CUT), 0) / size
            alert["summary"] = kept[: int(len(kept) * ratio)] + _CUT
        elif errors and len(errors) > 1:  # each one is in its dead letter too
            del errors[(len(errors) + 1) // 2 :]
        else:  # a key of ~1/2 the limit: cannot be, ingest refuses such keys
            return Publish("alert", topic, key, alert, headers, oid, encoded=encoded)


def outcome_effects(
    flow: CompiledFlow, key: str, inst: InstanceState, trigger: str, now: int, topics: Topics
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
        _outcome_record(record, key, oid, topics),
        Signal("ended", flow.name, inst.version, key, inst.outcome, None, now, duration),
    ]


def _outcome_record(record: dict[str, Any], key: str, oid: str, topics: Topics) -> Publish:
    """The outcome record within its topic's limit: when it would be larger (thousands of
    error events), its `deviations` keep the first ones that fit and `deviations_truncated`
    says how many were left out. Measured only when a rough bound says it may not fit."""
    topic = topics.outcomes
    limit = topics.limits.of(topic)
    headers = (("observer-id", oid),)
    deviations: list[str] = record["deviations"]
    rough = _FIXED + 12 * len(key) + 400 * len(record["steps"]) + 16 * len(deviations)
    if rough <= limit:
        return Publish("outcome", topic, key, record, headers, oid)
    key_len = len(key.encode("utf-8", "surrogatepass"))
    total = len(deviations)
    while True:
        encoded = orjson.dumps(record)
        over = record_bytes(key_len, len(encoded), header_bytes(headers)) - limit
        if over <= 0 or not deviations:
            return Publish("outcome", topic, key, record, headers, oid, encoded=encoded)
        del deviations[max(len(deviations) - over // 7 - 1, 0) :]  # each one >= 7 bytes
        record["deviations_truncated"] = total - len(deviations)


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
                    if type(value) is dict and DROPPED in value:  # over its budget
                        value = _not_kept(step.name, parts, value[DROPPED])
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


def _not_kept(step: str, parts: Sequence[str], size: Any) -> Any:
    """What templates see of a captured value that was not kept: using it fails."""
    return not_kept(
        f"steps.{step}.{'.'.join(parts)} was not kept: {size} bytes, over the "
        f"{MAX_CAPTURE_BYTES}-byte budget of an event's captured values"
    )


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
