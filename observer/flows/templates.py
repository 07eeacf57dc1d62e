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

from jinja2 import ChainableUndefined, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment

__all__ = ["Template", "TemplateContextSpec", "compile_template", "compile_value"]

_SINGLE = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.DOTALL)
DEVIATION_FIELDS = ("kind", "step", "deadline", "observed_at", "late_by", "late_by_ms")


class _Env(SandboxedEnvironment):
    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping):
            if attribute in obj:
                return obj[attribute]
            return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, Mapping) and argument not in obj and str(argument) in obj:
            return obj[str(argument)]
        return super().getitem(obj, argument)


@dataclass(frozen=True, slots=True)
class TemplateContextSpec:
    """What a flow's templates may name: its key name and each step's captured selectors."""

    key_name: str
    captures: Mapping[str, Sequence[str]]  # step name -> captured selectors
    handler: bool = True  # deviation.* available


class TemplateEnv:
    """The one sandboxed Jinja environment of the process (compilation is cached by Jinja)."""

    def __init__(self) -> None:
        # None renders as "" in text (a null step in "{{ deviation.step }}" is no "None")
        self.env = _Env(
            undefined=ChainableUndefined,
            autoescape=False,
            finalize=lambda v: "" if v is None else v,
        )


_ENV = TemplateEnv()


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
    """A compiled template; `render(ctx)` gives a JSON value (single expression) or a str."""

    source: str
    _fn: Callable[[Mapping[str, Any]], Any]

    def render(self, context: Mapping[str, Any]) -> Any:
        return self._fn(context)


def _constant(value: Any) -> Callable[[Mapping[str, Any]], Any]:
    return lambda _ctx: value


def _plain_json(value: Any) -> Any:
    """Make a rendered expression's value JSON-friendly (tuples to lists, undefined to None)."""
    if isinstance(value, ChainableUndefined):
        return None
    if isinstance(value, tuple):
        return [_plain_json(v) for v in value]
    return value


def _attribute_path(expr: str) -> tuple[str, ...] | None:
    """`steps.placed.value.total` -> its names, when the expression is nothing but a name and
    attributes (no filter, call, index or operator); None otherwise."""
    try:
        ast = _ENV.env.parse("{{" + expr + "}}")
    except TemplateSyntaxError:
        return None
    if len(ast.body) != 1 or not isinstance(ast.body[0], nodes.Output):
        return None
    out = ast.body[0].nodes
    if len(out) != 1:
        return None
    node = out[0]
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
        if type(node) is tuple:
            return _plain_json(node)
        return node if type(node) in _PLAIN else slow(c)

    return render


# values a dict walk may return as they are (Jinja returns them unchanged too)
_PLAIN = frozenset({str, int, float, bool, type(None), dict, list})


def compile_template(source: str, ctx: TemplateContextSpec) -> tuple[Template | None, list[str]]:
    """Compile one template string; returns (template or None, problems in plain words)."""
    env = _ENV.env
    if "{{" not in source and "{%" not in source:
        return Template(source, _constant(source)), []
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        return None, [f"template '{source}' does not parse: {exc.message}"]
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
    declared = meta.find_undeclared_variables(ast)
    for name in sorted(declared - allowed_roots):
        problems.append(
            f"template '{source}' names '{name}', which is not in the template context "
            f"({', '.join(sorted(allowed_roots))})"
        )
    for chain in _chains(ast):
        if chain[0] in declared:
            problem = _check_chain(chain, ctx)
            if problem:
                problems.append(f"template '{source}': {problem}")
    if problems:
        return None, sorted(set(problems))
    single = _SINGLE.match(source)
    if single and "{{" not in single.group("expr") and "{%" not in source:
        expr = env.compile_expression(single.group("expr"), undefined_to_none=True)

        def slow(c: Mapping[str, Any]) -> Any:
            return _plain_json(expr(**c))

        path = _attribute_path(single.group("expr"))
        if path is not None:
            return Template(source, _fast_path(path, slow)), []
        return Template(source, slow), []
    tpl = env.from_string(source)
    return Template(source, lambda c: tpl.render(c)), []


def compile_value(
    value: Any, ctx: TemplateContextSpec
) -> tuple[Callable[[Mapping[str, Any]], Any], list[str]]:
    """Compile every string leaf of a JSON-like value; returns a renderer and problems."""
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
