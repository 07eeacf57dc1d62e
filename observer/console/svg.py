"""A `FlowLayout` drawn as SVG (pure). The live numbers are empty `<tspan>`s the browser fills
by `data-step` and `data-field` (`observer/console/static/console.js`), so the drawing is
rendered once per flow version and the numbers travel as small JSON documents."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from observer.console.layout import NODE_H, NODE_W, Edge, FlowLayout, Node

__all__ = ["NUMBER_FIELDS", "render_svg"]

# the live numbers of a step node, in the order they are drawn: (line, [(field, prefix)])
NUMBER_LINES = (
    (("waiting", "waiting "), ("overdue", " · overdue ")),
    (("observed", "1h ✓ "), ("missing", " · ✗ "), ("late", " · late ")),
    (("p50", "p50 "), ("p99", " · p99 ")),
)
NUMBER_FIELDS = tuple(name for line in NUMBER_LINES for name, _ in line)


def _a(value: str | int) -> str:
    return quoteattr(str(value))


def _edge(layout: FlowLayout, edge: Edge) -> str:
    src, dst = layout.node(edge.src), layout.node(edge.dst)
    x1, y1 = src.x + NODE_W, src.y + NODE_H // 2
    if edge.kind == "switch":  # down into a lane below: from the source's right, into the top
        x2, y2 = dst.x + NODE_W // 2, dst.y + 18
        d = f"M{x1},{y1} C{x1 + 40},{y1} {x2},{y2 - 80} {x2},{y2}"
    else:
        x2, y2 = dst.x, dst.y + NODE_H // 2
        if x2 <= x1:  # to a node below or left of its source: leave from the bottom
            x1, y1 = src.x + NODE_W // 2, src.y + NODE_H
        bend = max(24, (x2 - x1) // 2)
        d = f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
    out = [
        f'<path class="edge {edge.kind}" d={_a(d)} marker-end="url(#arrow)"'
        f" data-src={_a(edge.src)} data-dst={_a(edge.dst)}/>"
    ]
    if edge.label:
        if edge.kind == "switch":  # a long way down: said next to where it leaves
            lx, ly, anchor = x1 + 6, y1 + 14, "start"
        else:  # just before the arrow
            lx, ly, anchor = x2 - 8, y2 - 6, "end"
        out.append(
            f'<text class="edge-label {edge.kind}" x="{lx}" y="{ly}" text-anchor="{anchor}">'
            f"{escape(edge.label)}</text>"
        )
    return "".join(out)


def _step(node: Node) -> str:
    classes = (
        "node step" + (" optional" if node.optional else "") + (" start" if node.start else "")
    )
    lines = [
        f'<g class={_a(classes)} data-step={_a(node.id)} data-path={_a(node.path)} tabindex="0"'
        f' role="button">',
        f"<title>{escape(node.label)}: open the instances waiting here</title>",
        f'<rect x="{node.x}" y="{node.y}" width="{NODE_W}" height="{NODE_H}" rx="8"/>',
        f'<text class="name" x="{node.x + 10}" y="{node.y + 18}">{escape(node.label)}</text>',
        f'<text class="sub" x="{node.x + 10}" y="{node.y + 33}">{escape(node.sub)}</text>',
    ]
    for i, fields in enumerate(NUMBER_LINES):
        y = node.y + 51 + 16 * i
        spans = "".join(
            f'<tspan class="label">{escape(prefix)}</tspan>'
            f'<tspan class="num" data-field="{name}">\u2013</tspan>'
            for name, prefix in fields
        )
        lines.append(f'<text class="nums" x="{node.x + 10}" y="{y}">{spans}</text>')
    lines.append("</g>")
    return "".join(lines)


def _other(node: Node) -> str:
    return (
        f'<g class="node {node.kind}" data-node={_a(node.id)}>'
        f'<rect x="{node.x}" y="{node.y + 18}" width="{NODE_W}" height="{NODE_H - 36}" rx="24"/>'
        f'<text class="name" x="{node.x + NODE_W // 2}" y="{node.y + 40}" text-anchor="middle">'
        f"{escape(node.label)}</text>"
        f'<text class="sub" x="{node.x + NODE_W // 2}" y="{node.y + 56}" text-anchor="middle">'
        f"{escape(node.sub)}</text></g>"
    )


def render_svg(layout: FlowLayout) -> str:
    """The drawing: lanes, edges under nodes, then nodes."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="flow" viewBox="0 0 {layout.width} '
        f'{layout.height}" width="{layout.width}" height="{layout.height}" '
        f"data-flow={_a(layout.flow)} data-version={_a(layout.version)}>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker>'
        "</defs>",
    ]
    for title, y in layout.lanes:
        parts.append(f'<text class="lane" x="8" y="{y - 8}">{escape(title)}</text>')
    parts += [_edge(layout, e) for e in layout.edges]
    parts += [_step(n) if n.kind == "step" else _other(n) for n in layout.nodes]
    parts.append("</svg>")
    return "\n".join(parts)
