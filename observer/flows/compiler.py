"""Compile shape-checked `FlowSpec`s into `CompiledFlow`s, checking every cross-reference.

All problems of all files are collected and raised together as one `FlowError`, each with the
file and line to fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from observer.errors import FlowError, FlowProblem
from observer.flows.action_compiler import compile_action
from observer.flows.aliases import compile_aliases
from observer.flows.avro import avro_text, load_avro
from observer.flows.compiled import (
    NO_HANDLER,
    CompiledAction,
    CompiledError,
    CompiledFlow,
    CompiledHandler,
    CompiledPath,
    CompiledSla,
    CompiledSlo,
    CompiledSource,
    CompiledStep,
)
from observer.flows.cycles import check_cycles
from observer.flows.guardrails import compile_guardrails
from observer.flows.loader import LineMap, LoadedFlow, load_flows
from observer.flows.registry import FlowRegistry
from observer.flows.selectors import compile_selector
from observer.flows.spec import EVENT_REF, FlowSpec, HandlerSpec, StepSpec
from observer.flows.templates import TemplateContextSpec
from observer.flows.webhook import conflicting_webhooks
from observer.timefmt import parse_duration

__all__ = ["compile_flow", "compile_flows", "load_registry"]

RESERVED_KEY_NAMES = {"flow", "version", "now", "instance", "steps", "deviation"}


def _warn_ms(warn: str | None, within_ms: int) -> int:
    assert warn is not None
    if warn.endswith("%"):
        return round(within_ms * float(warn[:-1]) / 100)
    return parse_duration(warn)


class _FlowCompiler:
    """Compiles one flow document; collects problems instead of stopping at the first."""

    def __init__(self, loaded: LoadedFlow) -> None:
        self.loaded = loaded
        self.spec: FlowSpec = loaded.spec
        self.file = loaded.file
        self.lines: LineMap = loaded.lines
        self.problems: list[FlowProblem] = []
        self.actions: dict[str, CompiledAction] = {}

    def problem(self, loc: Sequence[str | int], message: str) -> None:
        self.problems.append(FlowProblem(self.file, self.lines.line(loc), message, self.spec.flow))

    # -- pieces ---------------------------------------------------------------------------------

    def _sources(self) -> dict[str, CompiledSource]:
        out: dict[str, CompiledSource] = {}
        for name, src in self.spec.sources.items():
            schema = text = None
            if src.format == "avro" and src.schema_ is not None:
                try:
                    schema = load_avro(src.schema_, self.loaded)
                    text = avro_text(src.schema_, self.loaded)
                except Exception as exc:
                    self.problem(
                        ("sources", name, "schema"),
                        f"source '{name}': cannot load Avro schema '{src.schema_}': {exc}",
                    )
            out[name] = CompiledSource(
                name=name,
                topic=src.topic,
                format=src.format,
                avro_schema=schema,
                type=compile_selector(src.type),
                key=compile_selector(src.key),
                id=compile_selector(src.id) if src.id else None,
                time=compile_selector(src.time),
                type_text=src.type,
                key_text=src.key,
                time_text=src.time,
                avro_schema_text=text,
                via=src.via,
            )
        return out

    def _refs(
        self, refs: Iterable[str], loc: tuple[str | int, ...], what: str
    ) -> frozenset[tuple[str, str]]:
        out = set()
        for j, ref in enumerate(refs):
            m = EVENT_REF.match(ref)
            assert m is not None  # checked by the spec
            source, etype = m.group(1), m.group(2)
            if source not in self.spec.sources:
                known = ", ".join(self.spec.sources)
                self.problem(
                    (*loc, "on", j), f"{what} refers to unknown source '{source}' (known: {known})"
                )
            out.add((source, etype))
        return frozenset(out)

    def _compile_actions(self, ctx: TemplateContextSpec) -> None:
        for name, act in self.spec.actions.items():
            self.actions[name] = compile_action(name, act, ctx, self.loaded, self.problem)
        for name, message in conflicting_webhooks(self.actions):
            self.problem(("actions", name, "webhook", "url"), message)

    def _handler(
        self, h: HandlerSpec | None, loc: tuple[str | int, ...], what: str
    ) -> CompiledHandler:
        if h is None:
            return NO_HANDLER
        actions = []
        severity, summary, alert_seen = None, None, False
        for j, name in enumerate(h.do):
            act = self.actions.get(name)
            if act is None:
                known = ", ".join(self.spec.actions) or "none defined"
                self.problem(
                    (*loc, "do", j) if loc[-1] != "do" else (*loc, j),
                    f"{what} names unknown action '{name}' (known: {known})",
                )
                continue
            if act.kind == "alert" and not alert_seen:  # the first `alert:` action wins
                severity, summary, alert_seen = act.severity, act.summary, True
            actions.append(act)
        then = None
        if h.then is not None:
            names = list(self.spec.paths)
            if h.then not in self.spec.paths:
                self.problem(
                    (*loc, "then"),
                    f"{what} switches to unknown path '{h.then}' (paths: {', '.join(names) or 'none defined'})",
                )
            else:
                then = names.index(h.then) + 1
        return CompiledHandler(tuple(actions), then, h.alert, severity, summary)

    def _steps(
        self, path_index: int, specs: list[StepSpec], loc: tuple[str | int, ...], first_index: int
    ) -> list[CompiledStep]:
        names = [s.step for s in specs]
        index_of = {n: first_index + i for i, n in enumerate(names)}
        out: list[CompiledStep] = []
        prev_required: int | None = None
        for i, s in enumerate(specs):
            sloc = (*loc, i)
            what = f"step '{s.step}'"
            on = self._refs(s.on, sloc, what)
            is_start = path_index == 0 and i == 0
            if s.after is not None:
                anchor_t = self._anchors(s, sloc, what, index_of)
            elif is_start or prev_required is None:
                anchor_t = ()
            else:
                anchor_t = (prev_required,)
            within = parse_duration(s.within) if s.within else None
            warn = self._warn(s, sloc, what, within)
            self._check_step(s, sloc, what, is_start, within, anchor_t)
            captures = tuple((c, compile_selector(c)) for c in s.capture)
            step = CompiledStep(
                index=first_index + i,
                name=s.step,
                path=path_index,
                on=on,
                anchors=anchor_t,
                within_ms=within,
                warn_ms=warn,
                optional=s.optional,
                captures=captures,
                if_missing=self._handler(s.if_missing, (*sloc, "if_missing"), f"{what} if_missing"),
                if_late=self._handler(s.if_late, (*sloc, "if_late"), f"{what} if_late"),
                if_warning=self._handler(s.if_warning, (*sloc, "if_warning"), f"{what} if_warning"),
                if_out_of_order=(
                    self._handler(
                        s.if_out_of_order, (*sloc, "if_out_of_order"), f"{what} if_out_of_order"
                    )
                    if s.if_out_of_order is not None
                    else None
                ),
                is_start=is_start,
            )
            out.append(step)
            if not s.optional:
                prev_required = step.index
        check_cycles(out, loc, self.problem)
        return out

    def _anchors(
        self, s: StepSpec, sloc: tuple[str | int, ...], what: str, index_of: dict[str, int]
    ) -> tuple[int, ...]:
        """The step indexes of `after:` (each a step of the same path, not the step itself)."""
        anchors = []
        for j, a in enumerate(s.after or ()):
            if a not in index_of:
                other = (
                    " (anchors must be steps of the same path)" if a in self._all_step_names else ""
                )
                self.problem(
                    (*sloc, "after", j), f"{what}: 'after' names unknown step '{a}'{other}"
                )
            elif a == s.step:
                self.problem((*sloc, "after", j), f"{what} cannot be anchored at itself")
            else:
                anchors.append(index_of[a])
        return tuple(anchors)

    def _warn(
        self, s: StepSpec, sloc: tuple[str | int, ...], what: str, within: int | None
    ) -> int | None:
        """The step's warn point (ms), which needs a window and must be inside it."""
        if s.warn is None:
            return None
        if within is None:
            self.problem((*sloc, "warn"), f"{what}: 'warn' needs 'within'")
            return None
        warn = _warn_ms(s.warn, within)
        if warn >= within:
            self.problem(
                (*sloc, "warn"),
                f"{what}: warn ({s.warn}) must be shorter than within ({s.within})",
            )
        return warn

    def _check_step(
        self,
        s: StepSpec,
        sloc: tuple[str | int, ...],
        what: str,
        is_start: bool,
        within: int | None,
        anchors: tuple[int, ...],
    ) -> None:
        """Settings that cannot take effect: a start with an anchor, window or `optional`;
        handlers of deviations the step can never raise."""
        if is_start and s.after:
            self.problem((*sloc, "after"), f"{what} starts the flow and cannot have an anchor")
        if is_start:
            if within is not None:
                self.problem((*sloc, "within"), f"{what} starts the flow and has no window")
            if s.optional:
                self.problem((*sloc, "optional"), f"{what} starts the flow and cannot be optional")
        if s.if_missing is not None and within is None:
            self.problem((*sloc, "if_missing"), f"{what}: if_missing never fires without 'within'")
        if s.if_warning is not None and s.warn is None:
            self.problem((*sloc, "if_warning"), f"{what}: if_warning never fires without 'warn'")
        if s.if_late is not None and within is None:
            self.problem((*sloc, "if_late"), f"{what}: if_late never fires without 'within'")
        if s.if_out_of_order is not None and not anchors:
            self.problem(
                (*sloc, "if_out_of_order"),
                f"{what}: if_out_of_order never fires: the step has no anchor step",
            )
        if s.optional and (s.if_missing is not None or s.if_warning is not None):
            self.problem(
                (*sloc, "optional"), f"{what} is optional: it never raises missing or warning"
            )

    def _template_context(self, steps: list[StepSpec]) -> TemplateContextSpec:
        """What templates may name: the key, each step's captures, the aliases (if any)."""
        aliases = self.spec.aliases
        return TemplateContextSpec(
            self.spec.key,
            {s.step: list(s.capture) for s in steps},
            aliases=frozenset(aliases) if aliases else None,
        )

    def _slo(self) -> CompiledSlo | None:
        slo = self.spec.slo
        if slo is None:
            return None
        within, window = parse_duration(slo.within), parse_duration(slo.window)
        if within >= window:
            self.problem(
                ("slo", "within"),
                f"slo: within ({slo.within}) must be shorter than window ({slo.window})",
            )
        pct = slo.objective.strip()[:-1].strip()
        return CompiledSlo(float(pct) / 100, pct, within, window)

    # -- the whole flow -------------------------------------------------------------------------

    def compile(self) -> CompiledFlow | None:
        spec = self.spec
        if spec.key in RESERVED_KEY_NAMES:
            self.problem(("key",), f"key name '{spec.key}' collides with a template name")
        all_specs = self._unique_steps()
        ctx = self._template_context([s for _, s in all_specs])
        sources = self._sources()
        self._compile_actions(ctx)
        steps, paths = self._paths()
        errors = [
            CompiledError(
                i,
                self._refs(e.on, ("errors", i), f"errors[{i}]"),
                self._handler(e.handler(), ("errors", i), f"errors[{i}]"),
            )
            for i, e in enumerate(spec.errors)
        ]
        sla = self._sla()
        slo = self._slo()
        aliases = compile_aliases(spec, self.problem, self._handler)
        steps, step_index = self._index_steps(steps, all_specs)
        error_index = self._error_index(errors, step_index)
        guardrails = compile_guardrails(spec.guardrails)
        if self.problems:
            return None
        return CompiledFlow(
            name=spec.flow,
            version=spec.version,
            file=self.file,
            key_name=spec.key,
            sources=sources,
            steps=tuple(steps),
            paths=tuple(paths),
            errors=tuple(errors),
            sla=sla,
            buffer_ms=parse_duration(spec.buffer),
            retain_ms=parse_duration(spec.retain),
            expire_ms=parse_duration(spec.expire),
            step_index={k: tuple(v) for k, v in step_index.items()},
            error_index=error_index,
            slo=slo,
            guardrails=guardrails,
            aliases=aliases.aliases,
            alias_from=aliases.alias_from,
            if_alias_conflict=aliases.if_alias_conflict,
        )

    def _unique_steps(self) -> list[tuple[tuple[str | int, ...], StepSpec]]:
        """Every step of every path with its location; a name used twice is a problem."""
        spec = self.spec
        self._all_step_names = [s.step for s in spec.steps] + [
            s.step for p in spec.paths.values() for s in p.steps
        ]
        seen: dict[str, tuple[str | int, ...]] = {}
        all_specs: list[tuple[tuple[str | int, ...], StepSpec]] = [
            (("steps", i), s) for i, s in enumerate(spec.steps)
        ] + [
            (("paths", pn, "steps", i), s)
            for pn, p in spec.paths.items()
            for i, s in enumerate(p.steps)
        ]
        for loc, s in all_specs:
            if s.step in seen:
                self.problem(
                    (*loc, "step"),
                    f"step name '{s.step}' is used twice (step names are unique in a flow)",
                )
            seen[s.step] = loc
        return all_specs

    def _paths(self) -> tuple[list[CompiledStep], list[CompiledPath]]:
        """The main path's steps, then each alternate path's, numbered in that order."""
        spec = self.spec
        steps = self._steps(0, list(spec.steps), ("steps",), 0)
        paths = [
            CompiledPath(
                0,
                "main",
                "completed",
                tuple(s.index for s in steps),
                tuple(s.index for s in steps if not s.optional),
            )
        ]
        for pi, (pname, p) in enumerate(spec.paths.items(), start=1):
            psteps = self._steps(pi, list(p.steps), ("paths", pname, "steps"), len(steps))
            steps.extend(psteps)
            paths.append(
                CompiledPath(
                    pi,
                    pname,
                    p.outcome,
                    tuple(s.index for s in psteps),
                    tuple(s.index for s in psteps if not s.optional),
                )
            )
        return steps, paths

    def _sla(self) -> CompiledSla | None:
        sla = self.spec.sla
        if sla is None:
            return None
        within, warn = parse_duration(sla.within), None
        if sla.warn is not None:
            warn = _warn_ms(sla.warn, within)
            if warn >= within:
                self.problem(
                    ("sla", "warn"),
                    f"sla: warn ({sla.warn}) must be shorter than within ({sla.within})",
                )
        if sla.if_warning is not None and sla.warn is None:
            self.problem(("sla", "if_warning"), "sla: if_warning never fires without 'warn'")
        return CompiledSla(
            within,
            warn,
            self._handler(sla.if_breached, ("sla", "if_breached"), "sla if_breached"),
            self._handler(sla.if_warning, ("sla", "if_warning"), "sla if_warning"),
        )

    def _index_steps(
        self,
        steps: list[CompiledStep],
        all_specs: list[tuple[tuple[str | int, ...], StepSpec]],
    ) -> tuple[list[CompiledStep], dict[tuple[str, str], list[int]]]:
        """Which steps each (source, type) advances (one per path at most), and each step's
        sharing and dependents filled in."""
        step_index: dict[tuple[str, str], list[int]] = {}
        for cs in steps:
            for ref in cs.on:
                same_path = [steps[j] for j in step_index.get(ref, []) if steps[j].path == cs.path]
                if same_path:
                    loc = next(loc for loc, sp in all_specs if sp.step == cs.name)
                    self.problem(
                        (*loc, "on"),
                        f"step '{cs.name}' expects {ref[0]}.{ref[1]}, already expected by "
                        f"step '{same_path[0].name}' of the same path",
                    )
                step_index.setdefault(ref, []).append(cs.index)
        shared = {i for idxs in step_index.values() if len(idxs) > 1 for i in idxs}
        steps = [
            dataclasses.replace(
                cs,
                shares_on=cs.index in shared,
                dependents=tuple(o.index for o in steps if cs.index in o.anchors),
            )
            for cs in steps
        ]
        return steps, step_index

    def _error_index(
        self, errors: list[CompiledError], step_index: Mapping[tuple[str, str], list[int]]
    ) -> dict[tuple[str, str], int]:
        """(source, type) -> the first error entry that names it (never a step's event)."""
        error_index: dict[tuple[str, str], int] = {}
        for ce in errors:
            for ref in ce.on:
                if ref in step_index:
                    self.problem(
                        ("errors", ce.index, "on"),
                        f"errors[{ce.index}]: {ref[0]}.{ref[1]} is also a step's event",
                    )
                error_index.setdefault(ref, ce.index)
        return error_index


def compile_flow(loaded: LoadedFlow) -> tuple[CompiledFlow | None, list[FlowProblem]]:
    """Compile one loaded flow; returns the compiled flow (None if invalid) and its problems."""
    c = _FlowCompiler(loaded)
    flow = c.compile()
    return flow, c.problems


def compile_flows(
    loaded: Iterable[LoadedFlow], registry: FlowRegistry | None = None
) -> FlowRegistry:
    """Compile flows into a registry (a new one, or `registry` extended). Raises FlowError."""
    reg = registry.copy() if registry is not None else FlowRegistry()
    problems: list[FlowProblem] = []
    for lf in loaded:
        flow, errs = compile_flow(lf)
        problems.extend(errs)
        if flow is None:
            continue
        clash = reg.clash(flow)
        if clash is not None:
            problems.append(
                FlowProblem(
                    lf.file,
                    lf.lines.line(("version",)),
                    f"flow '{flow.name}' version {flow.version} is already defined in {clash.file}; "
                    "a changed flow needs a new version",
                    flow.name,
                )
            )
            continue
        reg.add(flow)
    if problems:
        raise FlowError(problems)
    return reg


def load_registry(
    targets: Iterable[str | Path], registry: FlowRegistry | None = None
) -> FlowRegistry:
    """Load and compile flow files or folders. Raises FlowError with every problem found."""
    return compile_flows(load_flows(targets), registry)
