"""The timers the ops API lists and the one the runtime schedules agree, on generated flows and
instance states (hypothesis).

`Engine.timers` (the API's list) and `Engine.next_due` (run for every slot written) must name
the same first timer, or an instance would show a pending deadline that never fires, or fire one
it does not show. Both also agree with `Engine.deadline`, the rule the judging of late events uses.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from observer.engine import timers as timer_rules
from observer.engine.core import Engine
from observer.engine.state import F_MISSING, BufferedEvent, Event, InstanceState, KeySlot
from observer.engine.timers import LIFECYCLE_KINDS, Timer, TimerKind
from observer.flows.compiled import CompiledFlow
from observer.flows.compiler import load_registry

T0 = 1_767_225_600_000
SECOND = 1000

seconds = st.integers(1, 90)


@st.composite
def step_specs(draw: st.DrawFn, prefix: str, count: int, first_is_start: bool) -> list[Any]:
    """`count` steps named prefix0, prefix1...: windows, warn points, optional steps and
    explicit anchors (earlier steps of the same list) drawn at random."""
    specs: list[dict[str, Any]] = []
    for i in range(count):
        name = f"{prefix}{i}"
        spec: dict[str, Any] = {"step": name, "on": f"src.{name.capitalize()}"}
        if first_is_start and i == 0:
            specs.append(spec)
            continue
        within = draw(seconds) if draw(st.integers(0, 3)) else None  # mostly a window
        if within is not None:
            spec["within"] = f"{within}s"
            if within > 1 and draw(st.booleans()):
                spec["warn"] = (
                    f"{draw(st.integers(1, within - 1))}s"
                    if draw(st.booleans())
                    else f"{draw(st.integers(1, 99))}%"
                )
        if i > 0 and draw(st.booleans()):
            spec["optional"] = True
        earlier = [s["step"] for s in specs]
        if draw(st.booleans()) and earlier:
            spec["after"] = draw(st.lists(st.sampled_from(earlier), min_size=1, unique=True))
        specs.append(spec)
    if all(s.get("optional") for s in specs):
        specs[-1].pop("optional")  # a path needs a required step to complete
    return specs


@st.composite
def flow_texts(draw: st.DrawFn) -> str:
    """A flow of 2-5 main steps, 0-2 alternate paths entered by error events, maybe an SLA."""
    flow: dict[str, Any] = {
        "flow": "gen",
        "version": 1,
        "sources": {"src": {"topic": "t", "type": "value.type", "key": "value.id"}},
        "steps": draw(step_specs("m", draw(st.integers(2, 5)), True)),
        "buffer": f"{draw(seconds)}s",
        "retain": f"{draw(seconds)}s",
        "expire": f"{draw(st.integers(30, 300))}s",
    }
    n_paths = draw(st.integers(0, 2))
    if n_paths:
        flow["paths"] = {
            f"p{j}": {
                "outcome": f"out{j}",
                "steps": draw(step_specs(f"p{j}s", draw(st.integers(1, 3)), False)),
            }
            for j in range(1, n_paths + 1)
        }
        flow["errors"] = [{"on": f"src.Fail{j}", "then": f"p{j}"} for j in range(1, n_paths + 1)]
    if draw(st.booleans()):
        within = draw(st.integers(2, 300))
        flow["sla"] = {"within": f"{within}s"}
        if draw(st.booleans()):
            flow["sla"]["warn"] = f"{draw(st.integers(1, within - 1))}s"
    return yaml.safe_dump(flow, sort_keys=False)


@functools.cache
def engine_for(text: str) -> Engine:
    with tempfile.TemporaryDirectory() as d:
        Path(d, "gen.yaml").write_text(text)
        return Engine(load_registry([Path(d, "gen.yaml")]))


times = st.integers(0, 200 * SECOND).map(lambda ms: T0 + ms)


@st.composite
def slots(draw: st.DrawFn, flow: CompiledFlow) -> KeySlot:
    """A slot of early events, an open instance (any path, steps observed in any order, any
    flags), or an ended one."""
    slot = KeySlot(flow.name, "k1")
    state = draw(st.sampled_from(["open", "ended", "buffer", "open", "open"]))
    if state == "buffer":
        reads = draw(st.lists(times, min_size=1, max_size=5))
        seq = draw(st.integers(0, 3))
        for i, read_at in enumerate(reads):
            step = draw(st.sampled_from(flow.steps[1:]))
            src, etype = sorted(step.on)[0]
            event = Event(src, etype, slot.key, f"e{i}", draw(times))
            slot.buffer.append(BufferedEvent(event, read_at, seq))
            seq += draw(st.integers(1, 3))
        return slot
    path = draw(st.sampled_from(flow.paths)).index
    entries = {0: T0}
    for p in (
        draw(st.sets(st.sampled_from(range(1, len(flow.paths))))) if len(flow.paths) > 1 else ()
    ):
        entries[p] = draw(times)
    if path:
        entries[path] = draw(times)
    indices = range(1, len(flow.steps))
    observed = {0: T0} | {i: draw(times) for i in draw(st.sets(st.sampled_from(indices)))}
    flags = {
        i: draw(st.integers(1, 15)) for i in draw(st.sets(st.sampled_from(indices), max_size=2))
    }
    inst = InstanceState(
        flow.version,
        T0,
        path,
        entries,
        observed,
        flags=flags,
        sla=draw(st.sampled_from([0, 0, 1, 2, 3])),
    )
    if state == "ended":
        inst.outcome = flow.paths[path].outcome
        inst.ended_at = draw(times)
    slot.instance = inst
    return slot


@st.composite
def cases(draw: st.DrawFn) -> tuple[Engine, list[KeySlot]]:
    """A generated flow and a few slots of it (compiling a flow costs more than a slot)."""
    engine = engine_for(draw(flow_texts()))
    return engine, draw(st.lists(slots(engine.registry.newest("gen")), min_size=1, max_size=8))


@settings(max_examples=100, deadline=None)
@given(cases())
def test_the_listed_timers_and_the_next_one_agree(case: tuple[Engine, list[KeySlot]]) -> None:
    engine, generated = case
    for slot in generated:
        _check_agreement(engine, slot)


def _check_agreement(engine: Engine, slot: KeySlot) -> None:
    flow = engine.flow_of(slot)
    listed = engine.timers(slot)
    assert listed == sorted(listed)
    assert len({t.rank for t in listed}) == len(listed)  # ranks order ties, so never repeat
    for lifecycle in (True, False):
        expected = [t for t in listed if lifecycle or t.kind not in LIFECYCLE_KINDS]
        first = timer_rules.next_timer(flow, slot, lifecycle)
        assert (None if first is None else Timer(*first)) == (expected[0] if expected else None)
        assert engine.next_due(slot, lifecycle) == (expected[0].due if expected else None)


@settings(max_examples=100, deadline=None)
@given(cases())
def test_step_timers_fall_at_the_deadline_the_judge_uses(
    case: tuple[Engine, list[KeySlot]],
) -> None:
    engine, generated = case
    for slot in generated:
        _check_deadlines(engine, slot)


def _check_deadlines(engine: Engine, slot: KeySlot) -> None:
    flow = engine.flow_of(slot)
    inst = slot.instance
    listed = engine.timers(slot)
    if inst is None:
        assert {t.kind for t in listed} == {TimerKind.ORPHAN}
        assert sorted(t.due for t in listed) == sorted(
            b.read_at + flow.buffer_ms for b in slot.buffer
        )
        return
    if not inst.open:
        assert inst.ended_at is not None
        assert listed == [Timer(inst.ended_at + flow.retain_ms, 0, TimerKind.RETAIN)]
        return
    for t in listed:
        if t.kind not in (TimerKind.WARN, TimerKind.MISSING):
            continue
        step = flow.steps[t.step]
        assert step.path == inst.path and not step.optional and step.index not in inst.observed
        deadline = engine.deadline(flow, inst, step)
        assert deadline is not None and step.within_ms is not None
        if t.kind == TimerKind.MISSING:
            assert t.due == deadline
        else:
            assert step.warn_ms is not None
            assert t.due == deadline - step.within_ms + step.warn_ms
    # every armed, unobserved, required step of the path that has not timed out has its deadline
    for idx in flow.paths[inst.path].required:
        step = flow.steps[idx]
        deadline = engine.deadline(flow, inst, step)
        missing_fired = inst.flags.get(idx, 0) & F_MISSING
        if idx in inst.observed or deadline is None or missing_fired:
            continue
        assert any(
            t.kind == TimerKind.MISSING and t.step == idx and t.due == deadline for t in listed
        )
