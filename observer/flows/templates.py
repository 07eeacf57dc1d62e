"""Templates (`{{ … }}`) compiled once with Jinja2's sandbox, checked against what the flow
captures, and rendered on deviations (never on the happy path).

A field whose template is a single `{{ expr }}` keeps the expression's JSON type; any other
template renders a string. Mapping keys win over methods (`value.items` is the field, not
`dict.items`), and `.0` on a mapping also finds the key "0".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.runtime import Undefined

from observer.errors import RenderError, TemplateLimitError
from observer.flows import bounds
from observer.flows.sandbox import BoundedEnvironment, bound_template
from observer.flows.template_checks import shape_problems
from observer.jsonexact import INT_MAX, INT_MIN
from observer.limits import MAX_RENDERED_SIZE, MAX_TEMPLATE_CHARS, MAX_TEMPLATE_DEPTH

__all__ = ["Template", "TemplateContextSpec", "compile_template", "compile_value", "not_kept"]

_SINGLE = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)
DEVIATION_FIELDS = (
    "kind",
    "step",
    "deadline",
    "observed_at",
    "late_by",
    "late_by_ms",
    # alias_conflict only (aliases: correlation by a second id)
    "alias",
    "alias_value",
    "held_by",
)
_ENV = BoundedEnvironment()  # the one environment of the process


@dataclass(frozen=True, slots=True)
class TemplateContextSpec:
    """What a flow's templates may name: its key name and each step's captured selectors."""

    key_name: str
    captures: Mapping[str, Sequence[str]]  # step name -> captured selectors
    handler: bool = True  # deviation.* available
    # aliases (correlation by a second id): the names `aliases.NAME` may use; None: the flow
    # declares none, and `aliases` is not in its context at all
    aliases: frozenset[str] | None = None


def _chains(node: nodes.Node) -> Iterator[list[str]]:
    """Yield the attribute chains rooted at names: `steps.placed.value.total` -> [...]."""

    def chain(n: nodes.Node) -> list[str] | None:
        if isinstance(n, nodes.Name):
            return [n.name]
        if isinstance(n, nodes.Getattr):
            base = chain(n.node)
            return None if base is None else [*base, n.attr]
        if isinstance(n, nodes.Getitem) and isinstance(n.arg, nodes.Const):
            base = chain(n.node)
            return None if base is None else [*base, str(n.arg.value)]
        return None

    def walk(n: nodes.Node) -> Iterator[list[str]]:
        if isinstance(n, nodes.Name | nodes.Getattr | nodes.Getitem):
            c = chain(n)
            if c is not None and isinstance(n, nodes.Name | nodes.Getattr | nodes.Getitem):
                yield c
                if isinstance(n, nodes.Getitem):
                    yield from walk(n.arg)
                return
        for child in n.iter_child_nodes():
            yield from walk(child)

    yield from walk(node)


def _check_chain(chain: list[str], ctx: TemplateContextSpec) -> str | None:
    root, rest = chain[0], chain[1:]
    if root in ("key", ctx.key_name, "flow", "version", "now"):
        return None
    if root == "instance":
        if rest and rest[0] != "started_at":
            return f"'instance.{rest[0]}' is not known (instance has started_at)"
        return None
    if root == "deviation":
        if not ctx.handler:
            return "'deviation' is only available in a handler's actions"
        if rest and rest[0] not in DEVIATION_FIELDS:
            return (
                f"'deviation.{rest[0]}' is not known (deviation has {', '.join(DEVIATION_FIELDS)})"
            )
        return None
    if root == "aliases" and ctx.aliases is not None:
        if rest and rest[0] not in ctx.aliases:
            known = ", ".join(sorted(ctx.aliases))
            return f"'aliases.{rest[0]}' names no alias of this flow (aliases: {known})"
        return None
    if root == "steps":
        if not rest:
            return None
        step = rest[0]
        if step not in ctx.captures:
            known = ", ".join(sorted(ctx.captures)) or "none"
            return f"'steps.{step}' names no step of this flow (steps: {known})"
        path = rest[1:]
        if not path or path == ["time"]:
            return None
        for sel in ctx.captures[step]:
            parts = sel.split(".")
            n = min(len(parts), len(path))
            if parts[:n] == path[:n]:
                return None
        caps = ", ".join(ctx.captures[step]) or "nothing"
        return (
            f"'steps.{step}.{'.'.join(path)}' names data step '{step}' does not capture "
            f"(it captures: {caps})"
        )
    return None  # unknown roots are reported by the caller from find_undeclared_variables


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled template; `render(ctx)` gives a JSON value (single expression) or a str,
    and raises RenderError (short, naming the template) on anything that goes wrong."""

    source: str
    _fn: Callable[[Mapping[str, Any]], Any]

    def render(self, context: Mapping[str, Any]) -> Any:
        return self._fn(context)


def not_kept(hint: str) -> Any:
    """A value in a template context that fails any template that uses it (output, operators,
    attributes, a single `{{ expr }}`), with `hint` as the reason; `| default(...)` replaces it.
    (Hostile input, issue 12: a captured value over its budget.)"""
    return StrictUndefined(hint=hint)


def _constant(value: Any) -> Callable[[Mapping[str, Any]], Any]:
    return lambda _ctx: value


def _quote(source: str) -> str:
    """A template's source for a message: one line, at most 60 characters."""
    text = source.encode("unicode_escape").decode("ascii") if not source.isprintable() else source
    return f"'{text}'" if len(text) <= 60 else f"'{text[:59]}…'"


def _render_error(source: str, exc: Exception) -> RenderError:
    """What a failure inside Jinja becomes: a short RenderError naming the template."""
    if isinstance(exc, RenderError):
        reason = str(exc)
    elif isinstance(exc, RecursionError):
        reason = "it recurses too deeply"
    elif isinstance(exc, MemoryError):
        reason = "out of memory"
    else:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if len(reason) > 200:
        reason = reason[:199] + "…"
    kind = TemplateLimitError if isinstance(exc, TemplateLimitError) else RenderError
    return kind(f"template {_quote(source)}: {reason}")


def _is_json(value: Any) -> bool:
    """True if `value` is JSON data already (as captured data is): plain dicts with text keys,
    lists, text, numbers orjson writes, booleans, null. Walks without recursion."""
    stack = [value]
    while stack:
        v = stack.pop()
        kind = type(v)
        if kind is dict:
            if not all(type(k) is str for k in v):
                return False
            stack.extend(v.values())
        elif kind is list:
            stack.extend(v)
        elif kind is int:
            if not INT_MIN <= v <= INT_MAX:
                return False
        elif not (kind is str or kind is float or kind is bool or v is None):
            return False
    return True


def _json_value(value: Any) -> Any:
    """A single expression's value as JSON data: undefined is null, tuples and other sequences
    (a `| map` generator, a range) are lists, mapping keys are text. Measured like any value a
    template builds; anything else (a function, a cycler) is a RenderError."""
    if isinstance(value, Undefined):
        if isinstance(value, StrictUndefined):
            str(value)  # a value that was not kept (`not_kept`): raises, naming it
        return None
    if hasattr(value, "__next__") or isinstance(value, range):
        value = list(value)
    bounds.measure(value)
    return value if _is_json(value) else _converted(value)


def _converted(value: Any) -> Any:
    if isinstance(value, Undefined) or value is None:
        return None
    if isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise RenderError("the expression gives an integer beyond 64 bits")
        return int(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): _converted(v) for k, v in value.items()}
    if isinstance(value, list | tuple | range) or hasattr(value, "__next__"):
        return [_converted(v) for v in value]
    raise RenderError(f"the expression gives {bounds.describe(value)}, not JSON data")


def _attribute_path(node: nodes.Node) -> tuple[str, ...] | None:
    """`steps.placed.value.total` -> its names, when the expression is nothing but a name and
    attributes (no filter, call, index or operator); None otherwise."""
    names: list[str] = []
    while isinstance(node, nodes.Getattr):
        names.append(node.attr)
        node = node.node
    if not isinstance(node, nodes.Name):
        return None
    names.append(node.name)
    return tuple(reversed(names))


def _fast_path(
    path: tuple[str, ...], slow: Callable[[Mapping[str, Any]], Any]
) -> Callable[[Mapping[str, Any]], Any]:
    """Render `name.a.b` by walking plain dicts, as the sandbox does for mappings (a key that
    is absent is undefined: None); anything else (a list, an object, a missing root name)
    goes through Jinja (`slow`), so the result is always Jinja's."""
    root, rest = path[0], path[1:]

    def render(c: Mapping[str, Any]) -> Any:
        if type(c) is not dict or root not in c:
            return slow(c)
        node = c[root]
        for name in rest:
            if type(node) is not dict:
                return slow(c)
            if name not in node:
                return None
            node = node[name]
        return node if type(node) in _PLAIN else slow(c)

    return render


# values a dict walk may return as they are (Jinja returns them unchanged too)
_PLAIN = frozenset({str, int, float, bool, type(None), dict, list})


def _single_expression(source: str, ast: nodes.Template) -> nodes.Expr | None:
    """The expression of a template that is exactly one `{{ expr }}` (whitespace around it
    allowed), which keeps its JSON type; None for any other template."""
    single = _SINGLE.match(source)
    if not single or "{{" in single.group("expr") or "{%" in source:
        return None
    if len(ast.body) != 1 or not isinstance(ast.body[0], nodes.Output):
        return None
    exprs = [
        n
        for n in ast.body[0].nodes
        if not (isinstance(n, nodes.TemplateData) and not n.data.strip())
    ]
    return exprs[0] if len(exprs) == 1 else None


def _expression_renderer(source: str, expr: nodes.Expr) -> Callable[[Mapping[str, Any]], Any]:
    """Render a single expression with the bounds: its value as JSON data."""
    body = [nodes.Assign(nodes.Name("result", "store"), expr, lineno=1)]
    tpl = _ENV.from_string(bound_template(nodes.Template(body, lineno=1)))

    def render(c: Mapping[str, Any]) -> Any:
        try:
            with bounds.rendering():
                context = tpl.new_context(dict(c))
                for _ in tpl.root_render_func(context):
                    pass
                return _json_value(context.vars.get("result"))
        except Exception as exc:
            raise _render_error(source, exc) from exc

    return render


def _text_renderer(source: str, ast: nodes.Template) -> Callable[[Mapping[str, Any]], Any]:
    """Render a template as text with the bounds, at most MAX_RENDERED_SIZE characters."""
    tpl = _ENV.from_string(bound_template(ast))

    def render(c: Mapping[str, Any]) -> str:
        try:
            with bounds.rendering():
                parts, size = [], 0
                for piece in tpl.root_render_func(tpl.new_context(dict(c))):
                    size += len(piece)
                    if size > MAX_RENDERED_SIZE:
                        raise TemplateLimitError(
                            f"it renders more than {MAX_RENDERED_SIZE} characters"
                        )
                    parts.append(piece)
                return "".join(parts)
        except Exception as exc:
            raise _render_error(source, exc) from exc

    return render


def _trial_context(ctx: TemplateContextSpec) -> dict[str, Any]:
    """A context with no data at all: what renders here renders whatever the data."""
    out: dict[str, Any] = {
        "key": "k",
        "flow": "f",
        "version": 1,
        "now": "2026-01-01T00:00:00Z",
        "instance": {"started_at": None},
        "steps": {},
        "deviation": dict.fromkeys(DEVIATION_FIELDS),
    }
    if ctx.aliases is not None:
        out["aliases"] = {}
    out[ctx.key_name] = "k"
    return out


def _parse(source: str) -> tuple[nodes.Template | None, list[str]]:
    if len(source) > MAX_TEMPLATE_CHARS:
        return None, [f"template {_quote(source)} is longer than {MAX_TEMPLATE_CHARS} characters"]
    try:
        return _ENV.parse(source), []
    except TemplateSyntaxError as exc:
        return None, [f"template {_quote(source)} does not parse: {exc.message}"]
    except RecursionError:
        return None, [f"template {_quote(source)} nests more than {MAX_TEMPLATE_DEPTH} deep"]
    except Exception as exc:  # Jinja's parser raises assorted errors on hostile input
        return None, [f"template {_quote(source)} does not parse: {type(exc).__name__}"]


def compile_template(source: str, ctx: TemplateContextSpec) -> tuple[Template | None, list[str]]:
    """Compile one template string; returns (template or None, problems in plain words)."""
    if "{{" not in source and "{%" not in source:
        return Template(source, _constant(source)), []
    ast, problems = _parse(source)
    if ast is None:
        return None, problems
    problems = [f"template {_quote(source)}: {p}" for p in shape_problems(ast)]
    if problems:
        return None, problems
    problems = _name_problems(source, ast, ctx)
    if problems:
        return None, sorted(set(problems))
    expr = _single_expression(source, ast)
    try:
        if expr is not None:
            slow = _expression_renderer(source, expr)
            path = _attribute_path(expr)
            fn = slow if path is None else _fast_path(path, slow)
        else:
            fn = _text_renderer(source, ast)
    except Exception as exc:  # Python refuses what Jinja generated (too deeply nested blocks)
        return None, [f"template {_quote(source)} cannot be compiled: {type(exc).__name__}"]
    try:
        fn(_trial_context(ctx))
    except TemplateLimitError as exc:  # it breaks a limit whatever the data
        return None, [f"{exc} (whatever the data)"]
    except RenderError:
        pass  # it depends on the data
    return Template(source, fn), []


def _name_problems(source: str, ast: nodes.Template, ctx: TemplateContextSpec) -> list[str]:
    """Names and captured data the template uses that the context does not have."""
    problems: list[str] = []
    allowed_roots = {
        "key",
        ctx.key_name,
        "flow",
        "version",
        "now",
        "instance",
        "steps",
        "deviation",
    }
    if ctx.aliases is not None:
        allowed_roots.add("aliases")
    declared = meta.find_undeclared_variables(ast)
    for name in sorted(declared - allowed_roots):
        problems.append(
            f"template {_quote(source)} names '{name}', which is not in the template context "
            f"({', '.join(sorted(allowed_roots))})"
        )
    for chain in _chains(ast):
        if chain[0] in declared:
            problem = _check_chain(chain, ctx)
            if problem:
                problems.append(f"template {_quote(source)}: {problem}")
    return problems


def compile_value(
    value: Any, ctx: TemplateContextSpec
) -> tuple[Callable[[Mapping[str, Any]], Any], list[str]]:
    """Compile every string leaf of a JSON-like value; returns a renderer and problems.
    The renderer raises RenderError when a template fails on the data it is given."""
    problems: list[str] = []

    def build(v: Any) -> Callable[[Mapping[str, Any]], Any]:
        if isinstance(v, str):
            tpl, errs = compile_template(v, ctx)
            problems.extend(errs)
            if tpl is None:
                return lambda c: None
            return tpl.render
        if isinstance(v, Mapping):
            items = [(str(k), build(x)) for k, x in v.items()]
            return lambda c: {k: f(c) for k, f in items}
        if isinstance(v, list):
            fns = [build(x) for x in v]
            return lambda c: [f(c) for f in fns]
        return _constant(v)

    return build(value), problems
