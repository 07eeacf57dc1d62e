"""A flow laid out for drawing, from its compiled definition (pure: no I/O).

The main path runs left to right: each step sits one column right of the latest of its anchors
(the start step in column 0), steps of one column stacked in declaration order. Every
alternate path gets a lane of its own below (those a step's handler switches to first): an entry node (the path and its outcome) one
column right of the earliest step whose handler switches to it, then its steps laid out from
their own anchors. Error handlers (`errors:`) are nodes at the left of the lane of the path
they switch to (or of a lane of their own). Edges: anchor -> step, labelled with the step's
window; step -> path entry for a handler's `then`, labelled with the deviation; error ->
path entry; entry -> the path's steps anchored at the switch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from observer.flows.compiled import CompiledFlow, CompiledPath, CompiledStep
from observer.timefmt import format_duration

__all__ = ["COL_W", "NODE_H", "NODE_W", "ROW_H", "Edge", "FlowLayout", "Node", "layout_flow"]

COL_W = 296  # column pitch
ROW_H = 112  # row pitch
NODE_W = 196
NODE_H = 92
MARGIN = 24
LANE_GAP = 36  # between lanes, room for the lane's title

NodeKind = Literal["step", "entry", "error"]
EdgeKind = Literal["anchor", "switch", "error", "entry"]


@dataclass(frozen=True, slots=True)
class Node:
    """A box: a step (`id` is its name), a path's entry (`path:<name>`) or an error handler
    (`error:<n>`)."""

    id: str
    kind: NodeKind
    label: str
    path: str
    x: int
    y: int
    sub: str = ""  # a second line: the events it waits for, the outcome, the error event
    optional: bool = False
    start: bool = False


@dataclass(frozen=True, slots=True)
class Edge:
    src: str
    dst: str
    kind: EdgeKind
    label: str = ""


@dataclass(slots=True)
class FlowLayout:
    flow: str
    version: int
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    lanes: list[tuple[str, int]] = field(default_factory=list)  # (title, y of the lane's top)
    width: int = 0
    height: int = 0

    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)


def _window(step: CompiledStep) -> str:
    if step.within_ms is None:
        return ""
    text = "≤ " + format_duration(step.within_ms)
    if step.warn_ms is not None:
        text += f" (warn {format_duration(step.warn_ms)})"
    return text


def _events(step: CompiledStep) -> str:
    names = sorted(typ for _, typ in step.on)
    return names[0] + (f" +{len(names) - 1}" if len(names) > 1 else "")


def _columns(flow: CompiledFlow, path: int, first: int) -> dict[int, int]:
    """Column of each step of `path`: one right of its latest anchor on the same path
    (`first` for a step anchored at the path's entry or at another path's step)."""
    cols: dict[int, int] = {}
    for i in flow.paths[path].steps:
        step = flow.steps[i]
        if step.is_start:
            cols[i] = first
            continue
        own = [cols[a] for a in step.anchors if a in cols]
        cols[i] = max(own) + 1 if own else first
    return cols


def _triggers(flow: CompiledFlow) -> dict[int, list[tuple[int, str]]]:
    """path index -> (step index, deviation) whose handler switches to it."""
    out: dict[int, list[tuple[int, str]]] = {}
    for step in flow.steps:
        handlers = (
            ("missing", step.if_missing),
            ("late", step.if_late),
            ("warning", step.if_warning),
            ("out of order", step.if_out_of_order),
        )
        for what, handler in handlers:
            if handler is not None and handler.then is not None:
                out.setdefault(handler.then, []).append((step.index, what))
    return out


def layout_flow(flow: CompiledFlow) -> FlowLayout:
    """Positions of every node and the edges between them (see the module's docstring)."""
    out = FlowLayout(flow.name, flow.version)
    main = _columns(flow, 0, 0)
    steps_col: dict[int, int] = dict(main)
    rows = _place(out, flow, main, top=MARGIN, path_name=flow.paths[0].name)
    y = MARGIN + rows * ROW_H
    out.lanes.append((f"{flow.paths[0].name} path → {flow.paths[0].outcome}", MARGIN))
    triggers = _triggers(flow)
    error_to: dict[int | None, list[int]] = {}
    for err in flow.errors:
        error_to.setdefault(err.handler.then, []).append(err.index)
    for path in _lane_order(flow, triggers, steps_col):
        y += LANE_GAP
        out.lanes.append((f"{path.name} path → {path.outcome}", y))
        trig = triggers.get(path.index, [])
        entry_col = min((steps_col[s] for s, _ in trig), default=0) + 1
        errs = error_to.get(path.index, [])
        for r, e in enumerate(errs):
            out.nodes.append(_error_node(flow, e, path.name, entry_col - 1, y + r * ROW_H))
            out.edges.append(Edge(f"error:{e}", f"path:{path.name}", "error", "error"))
        entry = Node(
            f"path:{path.name}", "entry", path.name, path.name,
            _x(entry_col), y, f"outcome {path.outcome}",
        )  # fmt: skip
        out.nodes.append(entry)
        for s, what in trig:
            out.edges.append(Edge(flow.steps[s].name, entry.id, "switch", what))
        cols = _columns(flow, path.index, entry_col + 1)
        steps_col.update(cols)
        rows = _place(out, flow, cols, top=y, path_name=path.name, entry=entry.id)
        y += max(rows, len(errs), 1) * ROW_H
    lone = error_to.get(None, [])
    if lone:
        y += LANE_GAP
        out.lanes.append(("errors handled without a path switch", y))
        for c, e in enumerate(lone):
            out.nodes.append(_error_node(flow, e, "", c, y))
        y += ROW_H
    out.width = max(n.x for n in out.nodes) + NODE_W + MARGIN
    out.height = y + MARGIN - (ROW_H - NODE_H)
    return out


def _lane_order(
    flow: CompiledFlow, triggers: dict[int, list[tuple[int, str]]], cols: dict[int, int]
) -> list[CompiledPath]:
    """Alternate paths top to bottom: those a step's handler switches to first (nearest the
    main path, so their edges cross no other lane), by the column they are entered at; then
    those only error handlers enter, in declaration order."""

    def rank(path: CompiledPath) -> tuple[int, int, int]:
        trig = triggers.get(path.index, [])
        if not trig:
            return (1, 0, path.index)
        return (0, min(cols[s] for s, _ in trig), path.index)

    return sorted(flow.paths[1:], key=rank)


def _x(col: int) -> int:
    return MARGIN + col * COL_W


def _error_node(flow: CompiledFlow, e: int, path: str, col: int, y: int) -> Node:
    on = sorted(f"{src}.{typ}" for src, typ in flow.errors[e].on)
    label = on[0] + (f" +{len(on) - 1}" if len(on) > 1 else "")
    return Node(f"error:{e}", "error", "error", path, _x(max(col, 0)), y, label)


def _place(
    out: FlowLayout,
    flow: CompiledFlow,
    cols: dict[int, int],
    *,
    top: int,
    path_name: str,
    entry: str | None = None,
) -> int:
    """Add the nodes of one path's steps (columns `cols`) and their incoming edges; the
    number of rows the lane needs."""
    used: dict[int, int] = {}
    for i, col in cols.items():
        step = flow.steps[i]
        row = used.get(col, 0)
        used[col] = row + 1
        out.nodes.append(
            Node(
                step.name, "step", step.name, path_name, _x(col), top + row * ROW_H,
                _events(step), step.optional, step.is_start,
            )
        )  # fmt: skip
        window = _window(step)
        anchors = [flow.steps[a].name for a in step.anchors]
        if not step.is_start and not anchors:
            anchors = [entry] if entry is not None else [flow.steps[0].name]
        for j, a in enumerate(anchors):  # the window once, on the first anchor's edge
            kind: EdgeKind = "entry" if a == entry else "anchor"
            out.edges.append(Edge(a, step.name, kind, window if j == 0 else ""))
    return max(used.values(), default=1)
