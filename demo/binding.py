"""What the demo reads from the flow file: topics, wire format, windows, command topics, and
what the observer should do about each fault. Pure (reads the flow file, nothing else).

The simulated shop (`shop.CHECKOUT`) and the flow are written separately; `bind` checks that
they agree — every step of the flow's main path is announced by some service, every event the
shop announces goes to a source the flow reads — and fits the services' latencies into the
flow's windows, so a happy order is never late whatever windows the flow chooses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.faults import Fault
from demo.shop import Catalogue, Reaction
from demo.wire import DemoError, WireFormat
from observer.errors import FlowError
from observer.flows.compiled import CompiledFlow, CompiledHandler
from observer.flows.compiler import compile_flows
from observer.flows.loader import load_flows
from observer.flows.registry import FlowRegistry
from observer.flows.spec import FlowSpec

__all__ = ["Expectation", "FlowBinding", "bind", "command_type"]

# A happy job takes at most this share of its step's window; a slow payment takes its whole
# window and this much more (at least LATE_MIN_MS), so `missing` fires first and `late` after.
HAPPY_SHARE = 0.4
LATE_SHARE = 0.2
LATE_MIN_MS = 2_000


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the observer should publish for an order carrying a fault.

    `required`: (kind, step) alerts that must appear (step None: any step);
    `allowed`: further alert kinds that are fine; `outcomes`: acceptable outcomes (empty: any).
    """

    required: frozenset[tuple[str, str | None]]
    allowed: frozenset[str]
    outcomes: frozenset[str]
    meaning: str  # what the observer does about it, in words

    def detected(self, alerts: list[tuple[str, str | None]]) -> bool:
        """Every required alert was seen (for a clean order: vacuously true)."""
        return all(
            any(k == kind and (step is None or s == step) for k, s in alerts)
            for kind, step in self.required
        )

    def unexpected(self, alerts: list[tuple[str, str | None]]) -> list[str]:
        """Alert kinds this fault does not explain (false alarms)."""
        explained = {k for k, _ in self.required} | self.allowed
        return [k for k, _ in alerts if k not in explained]

    def outcome_ok(self, outcome: str | None) -> bool:
        return outcome is not None and (not self.outcomes or outcome in self.outcomes)


@dataclass(frozen=True, slots=True)
class FlowBinding:
    """The flow as the demo uses it; build with `bind`."""

    flow: CompiledFlow
    spec: FlowSpec
    registry: FlowRegistry  # every flow of the file (for an offline run)
    wire: WireFormat
    catalogue: Catalogue  # latencies fitted to the windows, reactions the flow can read
    late_ms: int  # how long the slow service takes under SLOW_PAYMENT
    settle_ms: int  # after the last order, how long to wait for every outcome
    command_topics: tuple[str, ...]
    step_of: Mapping[tuple[str, str], str]  # (source, event type) -> step name
    main_steps: tuple[str, ...]
    expectations: Mapping[Fault | None, Expectation]
    notes: tuple[str, ...] = field(default=())  # what bind adjusted, for the log

    def step_for(self, source: str, event_type: str) -> str | None:
        return self.step_of.get((source, event_type))

    def expect(self, fault: Fault | None) -> Expectation:
        return self.expectations[fault]

    def duplicable(self) -> tuple[str, ...]:
        """Event types a DUPLICATE can hit: a later main step, on a source with event ids."""
        out = []
        for s in self.catalogue.services:
            if (
                s.after
                and self.spec.sources[s.source].id is not None
                and (s.source, s.emits) in self.step_of
            ):
                out.append(s.emits)
        return tuple(out)


def _handler_words(h: CompiledHandler, flow: CompiledFlow) -> str:
    words = [a.name for a in h.actions if a.kind != "alert"]
    if h.then is not None:
        words.append(f"path {flow.paths[h.then].name}")
    return ", ".join(words)


def _command_of(spec: FlowSpec, action: str) -> str | None:
    """The command type an action publishes (its value's or headers' `type`), if any."""
    a = spec.actions.get(action)
    if a is None or a.publish is None:
        return None
    return command_type(a.publish.value, a.publish.headers)


def _command_topics(spec: FlowSpec) -> tuple[str, ...]:
    topics = {
        a.publish.topic
        for a in spec.actions.values()
        if a.publish is not None and "{{" not in a.publish.topic
    }
    return tuple(sorted(topics))


def bind(flow_file: str | Path, catalogue: Catalogue, flow_name: str | None = None) -> FlowBinding:
    """Read `flow_file` and check the shop against it. Raises DemoError saying what disagrees."""
    try:
        loaded = load_flows([flow_file])
        registry = compile_flows(loaded)
    except FlowError as exc:
        raise DemoError(f"{flow_file} is not a valid flow:\n{exc}") from None
    names = registry.names()
    name = flow_name or names[0]
    if name not in names:
        raise DemoError(f"{flow_file} has no flow '{name}' (it has: {', '.join(names)})")
    flow = registry.newest(name)
    spec = next(f.spec for f in loaded if f.spec.flow == name and f.spec.version == flow.version)
    wire = WireFormat(spec.sources)
    notes: list[str] = []

    step_of: dict[tuple[str, str], str] = {}
    for step in flow.steps:
        for ref in step.on:
            step_of.setdefault(ref, step.name)
    main = flow.paths[0]
    main_steps = tuple(flow.steps[i].name for i in main.steps)

    # every required main-path step must be announced by some service
    emitted = catalogue.emitted()
    for i in main.required:
        step = flow.steps[i]
        if not step.on & emitted:
            wanted = " or ".join(f"{s}.{t}" for s, t in sorted(step.on))
            raise DemoError(
                f"{flow_file}: step '{step.name}' expects {wanted}, which no simulated service "
                "announces; update CHECKOUT in demo/shop.py to match the flow"
            )
    for service in catalogue.services:
        if service.source not in spec.sources:
            raise DemoError(
                f"{flow_file}: the flow has no source '{service.source}' (service '{service.name}')"
            )

    # reactions whose events the flow cannot read stay silent
    reactions = []
    for r in catalogue.reactions:
        if r.emits is not None and r.source not in spec.sources:
            notes.append(
                f"{r.service} answers {r.command} silently (the flow has no source '{r.source}')"
            )
            r = Reaction(r.command, r.service, r.source, None, r.latency_ms)
        reactions.append(r)

    # fit latencies into windows
    def window(source: str, event_type: str) -> int | None:
        name = step_of.get((source, event_type))
        return flow.step_named(name).within_ms if name is not None else None

    latencies: dict[str, tuple[int, int]] = {}
    for s in catalogue.services:
        w = window(s.source, s.emits)
        lo, hi = s.latency_ms
        if w is not None and hi > w * HAPPY_SHARE:
            hi = int(w * HAPPY_SHARE)
            lo = min(lo, hi // 2)
            notes.append(
                f"{s.name}: {s.job} takes {lo}-{hi} ms to fit the {w} ms window of its step"
            )
        latencies[s.name] = (lo, hi)
    fitted = Catalogue(
        catalogue.services,
        tuple(reactions),
        catalogue.slow,
        catalogue.lost,
        catalogue.held_until,
        catalogue.closes,
    ).with_latencies(latencies)

    slow = catalogue.service(catalogue.slow)
    paid_step = step_of.get((slow.source, slow.emits))
    paid_window = window(slow.source, slow.emits)
    if paid_step is None or paid_window is None:
        raise DemoError(
            f"{flow_file}: {slow.source}.{slow.emits} needs a step with a 'within' window"
        )
    late_ms = paid_window + max(LATE_MIN_MS, int(paid_window * LATE_SHARE))

    lost_service = next(s for s in catalogue.services if s.emits == catalogue.lost)
    lost_step = step_of.get((lost_service.source, catalogue.lost))
    if lost_step is None or window(lost_service.source, catalogue.lost) is None:
        raise DemoError(
            f"{flow_file}: {lost_service.source}.{catalogue.lost} needs a step with a 'within' window"
        )

    failed = (slow.source, slow.fails_with or "")
    error = next((e for e in flow.errors if failed in e.on), None)
    if error is None:
        raise DemoError(f"{flow_file}: {failed[0]}.{failed[1]} is not listed under errors:")
    error_outcome = (
        flow.paths[error.handler.then].outcome if error.handler.then is not None else None
    )

    main_outcome = main.outcome
    paid = flow.step_named(paid_step)
    slow_outcome = (
        flow.paths[paid.if_missing.then].outcome if paid.if_missing.then is not None else None
    )
    lost_handler = flow.step_named(lost_step).if_missing
    # the lost event comes back late if the observer's if_missing asks a service that resends it
    answered = {r.command: r.emits for r in reactions}
    resent = any(
        answered.get(_command_of(spec, a.name) or "") == catalogue.lost
        for a in lost_handler.actions
    )
    expectations: dict[Fault | None, Expectation] = {
        None: Expectation(
            frozenset(), frozenset(), frozenset({main_outcome}), f"no alert, {main_outcome}"
        ),
        Fault.DUPLICATE: Expectation(
            frozenset(),
            frozenset(),
            frozenset({main_outcome}),
            "no alert: a repeated event id changes nothing",
        ),
        Fault.OUT_OF_ORDER: Expectation(
            frozenset(),
            frozenset(),
            frozenset({main_outcome}),
            "no alert: events read before their OrderPlaced wait for it",
        ),
        Fault.SLOW_PAYMENT: Expectation(
            frozenset({("late", paid_step)}),
            frozenset({"missing", "warning", "sla_warning", "sla_breach"}),
            frozenset({slow_outcome}) if slow_outcome else frozenset(),
            f"missing at {paid_step} -> {_handler_words(paid.if_missing, flow) or 'alert'}; late when it arrives",
        ),
        Fault.LOST_EVENT: Expectation(
            frozenset({("missing", lost_step)}),
            frozenset({"late", "warning", "sla_warning", "sla_breach"}),
            frozenset({main_outcome}) if resent else frozenset(),
            f"missing at {lost_step} -> {_handler_words(lost_handler, flow) or 'alert'}"
            + ("; the resent event is late" if resent else ""),
        ),
        Fault.PAYMENT_FAILURE: Expectation(
            frozenset({("error", None)}),
            frozenset({"sla_warning"}),
            frozenset({error_outcome}) if error_outcome else frozenset(),
            f"error -> {_handler_words(error.handler, flow) or 'alert'}",
        ),
    }

    # the longest chain of windows along the anchors, then the longest alternate path
    chain: dict[int, int] = {}
    for i in main.steps:
        step = flow.steps[i]
        chain[i] = (step.within_ms or 0) + max((chain.get(a, 0) for a in step.anchors), default=0)
    alternate = max(
        (flow.steps[i].within_ms or 0 for p in flow.paths[1:] for i in p.steps), default=0
    )
    settle_ms = min(max(chain.values(), default=0) + alternate + 15_000, 180_000)
    return FlowBinding(
        flow=flow,
        spec=spec,
        registry=registry,
        wire=wire,
        catalogue=fitted,
        late_ms=late_ms,
        settle_ms=settle_ms,
        command_topics=_command_topics(spec),
        step_of=step_of,
        main_steps=main_steps,
        expectations=expectations,
        notes=tuple(notes),
    )


def command_type(value: Any, headers: Mapping[str, str]) -> str | None:
    """The type of a command record: its value's `type`, else a `type`/`ce_type` header."""
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return str(value["type"])
    return headers.get("type") or headers.get("ce_type")
