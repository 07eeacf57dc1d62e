"""Aliases (correlation by a second id): the `aliases:` of a flow, `via:` on its sources and the
`if_alias_conflict` handler, checked and compiled (`docs/flow-language.md`, "Correlating events
that carry another id").

A source with `via: NAME` reads values of alias NAME with its `key` selector, so its events
belong to whichever instance registered that value; an alias is registered from `from` events
of the instance itself, which therefore come from sources without `via`. A `via` source cannot
start an instance: its events name no instance until one registers the value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from observer.flows.compiled import CompiledAlias, CompiledHandler
from observer.flows.spec import EVENT_REF, FlowSpec, HandlerSpec

__all__ = ["CompiledAliases", "alias_flow", "compile_aliases", "split_alias_flow"]

Problem = Callable[[Sequence[str | int], str], None]
Handler = Callable[[HandlerSpec | None, tuple[str | int, ...], str], CompiledHandler]

# An alias slot's "flow" is `<flow>/<alias>`: a flow name never holds a slash, so the slot ids of
# alias values never meet those of instance keys (`<flow>:<key>`).
_SEPARATOR = "/"


def alias_flow(flow: str, alias: str) -> str:
    """The name under which the values of one alias of a flow are kept and routed."""
    return f"{flow}{_SEPARATOR}{alias}"


def split_alias_flow(name: str) -> tuple[str, str | None]:
    """(flow, alias) of an `alias_flow` name; (flow, None) for a plain flow name."""
    flow, sep, alias = name.partition(_SEPARATOR)
    return (flow, alias) if sep else (name, None)


@dataclass(frozen=True, slots=True)
class CompiledAliases:
    aliases: tuple[CompiledAlias, ...]
    alias_from: Mapping[tuple[str, str], tuple[int, ...]]
    if_alias_conflict: CompiledHandler


def compile_aliases(spec: FlowSpec, problem: Problem, handler: Handler) -> CompiledAliases:
    """Check `via`, `aliases` and `if_alias_conflict` against the flow; compile them."""
    names = list(spec.aliases)
    known = ", ".join(names) or "none defined"
    for sname, src in spec.sources.items():
        if src.via is not None and src.via not in spec.aliases:
            problem(
                ("sources", sname, "via"),
                f"source '{sname}': via names unknown alias '{src.via}' (aliases: {known})",
            )
    out: list[CompiledAlias] = []
    alias_from: dict[tuple[str, str], list[int]] = {}
    for i, (name, a) in enumerate(spec.aliases.items()):
        refs = set()
        for j, ref in enumerate(a.from_):
            m = EVENT_REF.match(ref)
            assert m is not None  # checked by the spec
            source, etype = m.group(1), m.group(2)
            given = spec.sources.get(source)
            if given is None:
                problem(
                    ("aliases", name, "from", j),
                    f"alias '{name}': from refers to unknown source '{source}' "
                    f"(known: {', '.join(spec.sources)})",
                )
            elif given.via is not None:
                problem(
                    ("aliases", name, "from", j),
                    f"alias '{name}': from names source '{source}', which reads values of alias "
                    f"'{given.via}' (via): an alias is registered from events of the instance",
                )
            refs.add((source, etype))
            alias_from.setdefault((source, etype), []).append(i)
        out.append(CompiledAlias(i, name, frozenset(refs), a.value))
    _check_start(spec, problem)
    if spec.if_alias_conflict is not None and not spec.aliases:
        problem(("if_alias_conflict",), "if_alias_conflict never fires: the flow has no aliases")
    if spec.aliases and spec.key == "aliases":
        problem(("key",), "key name 'aliases' collides with a template name")
    conflict = handler(spec.if_alias_conflict, ("if_alias_conflict",), "if_alias_conflict")
    return CompiledAliases(
        tuple(out), {ref: tuple(idx) for ref, idx in alias_from.items()}, conflict
    )


def _check_start(spec: FlowSpec, problem: Problem) -> None:
    """A `via` source cannot start an instance."""
    first = spec.steps[0]
    for j, ref in enumerate(first.on):
        m = EVENT_REF.match(ref)
        assert m is not None
        src = spec.sources.get(m.group(1))
        if src is not None and src.via is not None:
            problem(
                ("steps", 0, "on", j),
                f"step '{first.step}' starts the flow, but source '{m.group(1)}' reads values "
                f"of alias '{src.via}' (via): a via source cannot start an instance",
            )
