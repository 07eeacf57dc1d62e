"""What the demo reads from the flow file to run the shop against it: topics, wire format,
windows, command topics. Pure (reads the flow file, nothing else).

The simulated shop (`shop.CHECKOUT`) and the flow are written separately; `bind` checks that
they agree — every step of the flow's main path is announced by some service, every event the
shop announces goes to a source the flow reads — and fits the services' latencies into the
flow's windows, so a happy order is never late whatever windows the flow chooses.

What the observer should do about each order is not worked out here: the engine itself says
it, over the records the shop published (`expected.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from demo.shop import Catalogue, Reaction
from demo.wire import DemoError, WireFormat
from observer.errors import FlowError
from observer.flows.compiled import CompiledFlow
from observer.flows.compiler import compile_flows
from observer.flows.loader import load_flows
from observer.flows.registry import FlowRegistry
from observer.flows.spec import FlowSpec

__all__ = ["FlowBinding", "bind"]

# A happy job takes at most this share of its step's window; a slow payment takes its whole
# window and this much more (at least LATE_MIN_MS), so it lands well after its deadline.
HAPPY_SHARE = 0.4
LATE_SHARE = 0.2
LATE_MIN_MS = 2_000
# After the last order: at most the longest chain of windows, plus this, and never longer than
# SETTLE_MAX_MS (only a bound on waiting: a run ends as soon as every order has ended).
SETTLE_MARGIN_MS = 15_000
SETTLE_MAX_MS = 180_000


@dataclass(frozen=True, slots=True)
class FlowBinding:
    """The flow as the demo uses it; build with `bind`."""

    flow: CompiledFlow
    spec: FlowSpec
    registry: FlowRegistry  # every flow of the file (the engine that predicts, offline runs)
    wire: WireFormat
    catalogue: Catalogue  # latencies fitted to the windows, reactions the flow can read
    late_ms: int  # how long the slow service takes under SLOW_PAYMENT
    settle_ms: int  # after the last order, how long to wait at most for every outcome
    command_topics: tuple[str, ...]
    step_of: Mapping[tuple[str, str], str]  # (source, event type) -> the step whose window fits it
    main_steps: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())  # what bind adjusted, for the log

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


def _command_topics(spec: FlowSpec) -> tuple[str, ...]:
    topics = {
        a.publish.topic
        for a in spec.actions.values()
        if a.publish is not None and "{{" not in a.publish.topic
    }
    return tuple(sorted(topics))


def _load(flow_file: str | Path, flow_name: str | None) -> tuple[FlowRegistry, FlowSpec]:
    try:
        loaded = load_flows([flow_file])
        registry = compile_flows(loaded)
    except FlowError as exc:
        raise DemoError(f"{flow_file} is not a valid flow:\n{exc}") from None
    names = registry.names()
    name = flow_name or names[0]
    if name not in names:
        raise DemoError(f"{flow_file} has no flow '{name}' (it has: {', '.join(names)})")
    version = registry.newest(name).version
    spec = next(f.spec for f in loaded if f.spec.flow == name and f.spec.version == version)
    return registry, spec


def _check_shop(
    flow_file: str | Path, flow: CompiledFlow, spec: FlowSpec, catalogue: Catalogue
) -> None:
    """Every required main-path step is announced by some service, every service publishes
    to a source the flow reads."""
    emitted = catalogue.emitted()
    for i in flow.paths[0].required:
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


def _fit(
    catalogue: Catalogue, spec: FlowSpec, window: Mapping[tuple[str, str], int], notes: list[str]
) -> Catalogue:
    """The shop with answers the flow cannot read made silent, and every job short enough to
    take at most HAPPY_SHARE of its step's window."""
    reactions = []
    for r in catalogue.reactions:
        if r.emits is not None and r.source not in spec.sources:
            notes.append(
                f"{r.service} answers {r.command} silently (the flow has no source '{r.source}')"
            )
            r = Reaction(r.command, r.service, r.source, None, r.latency_ms)
        reactions.append(r)
    latencies: dict[str, tuple[int, int]] = {}
    for s in catalogue.services:
        w = window.get((s.source, s.emits))
        lo, hi = s.latency_ms
        if w is not None and hi > w * HAPPY_SHARE:
            hi = int(w * HAPPY_SHARE)
            lo = min(lo, hi // 2)
            notes.append(
                f"{s.name}: {s.job} takes {lo}-{hi} ms to fit the {w} ms window of its step"
            )
        latencies[s.name] = (lo, hi)
    return Catalogue(
        catalogue.services,
        tuple(reactions),
        catalogue.slow,
        catalogue.lost,
        catalogue.held_until,
        catalogue.closes,
    ).with_latencies(latencies)


def _settle_ms(flow: CompiledFlow) -> int:
    """The longest chain of windows along the main path's anchors, then the longest window of
    an alternate path, plus a margin: how long an order can take at most, roughly."""
    chain: dict[int, int] = {}
    for i in flow.paths[0].steps:
        step = flow.steps[i]
        chain[i] = (step.within_ms or 0) + max((chain.get(a, 0) for a in step.anchors), default=0)
    alternate = max(
        (flow.steps[i].within_ms or 0 for p in flow.paths[1:] for i in p.steps), default=0
    )
    return min(max(chain.values(), default=0) + alternate + SETTLE_MARGIN_MS, SETTLE_MAX_MS)


def bind(flow_file: str | Path, catalogue: Catalogue, flow_name: str | None = None) -> FlowBinding:
    """Read `flow_file` and check the shop against it. Raises DemoError saying what disagrees."""
    registry, spec = _load(flow_file, flow_name)
    flow = registry.newest(spec.flow)
    wire = WireFormat(spec.sources)
    _check_shop(flow_file, flow, spec, catalogue)

    step_of: dict[tuple[str, str], str] = {}
    for step in flow.steps:
        for ref in step.on:
            step_of.setdefault(ref, step.name)
    window = {
        ref: w
        for ref, name in step_of.items()
        if (w := flow.step_named(name).within_ms) is not None
    }
    notes: list[str] = []
    fitted = _fit(catalogue, spec, window, notes)

    slow = catalogue.service(catalogue.slow)
    paid_window = window.get((slow.source, slow.emits))
    if paid_window is None:
        raise DemoError(
            f"{flow_file}: {slow.source}.{slow.emits} needs a step with a 'within' window"
        )
    return FlowBinding(
        flow=flow,
        spec=spec,
        registry=registry,
        wire=wire,
        catalogue=fitted,
        late_ms=paid_window + max(LATE_MIN_MS, int(paid_window * LATE_SHARE)),
        settle_ms=_settle_ms(flow),
        command_topics=_command_topics(spec),
        step_of=step_of,
        main_steps=tuple(flow.steps[i].name for i in flow.paths[0].steps),
        notes=tuple(notes),
    )
