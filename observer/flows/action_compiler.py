"""Compiling one action of a flow's `actions:` (publish, alert or webhook)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from observer.flows.avro import avro_text, load_avro
from observer.flows.compiled import CompiledAction
from observer.flows.loader import LoadedFlow
from observer.flows.spec import ActionSpec
from observer.flows.templates import TemplateContextSpec, compile_value
from observer.flows.webhook import compile_webhook

__all__ = ["compile_action"]


def compile_action(
    name: str,
    act: ActionSpec,
    ctx: TemplateContextSpec,
    loaded: LoadedFlow,
    problem: Callable[[tuple[str | int, ...], str], None],
) -> CompiledAction:
    """One action of `actions:`: its templates compiled, its Avro schema loaded, its webhook
    checked; what is wrong goes to `problem(location, message)`."""
    loc: tuple[str | int, ...] = ("actions", name)
    errs: list[str] = []
    if act.publish is not None:
        p = act.publish
        topic, e1 = compile_value(p.topic, ctx)
        key, e2 = compile_value(p.key, ctx)
        headers, e3 = compile_value(p.headers, ctx)
        value, e4 = compile_value(p.value, ctx)
        errs = e1 + e2 + e3 + e4
        schema = text = None
        if p.schema_ is not None:
            try:
                schema = load_avro(p.schema_, loaded)
                text = avro_text(p.schema_, loaded)
            except Exception as exc:
                problem(
                    (*loc, "publish", "schema"),
                    f"action '{name}': cannot load Avro schema '{p.schema_}': {exc}",
                )
        for e in errs:
            problem((*loc, "publish"), f"action '{name}': {e}")
        return CompiledAction(
            name,
            "publish",
            topic=topic,
            key=key,
            headers=headers,
            value=value,
            value_is_mapping=isinstance(p.value, Mapping),
            avro_schema=schema,
            subject=p.subject,
            avro_schema_text=text,
        )
    if act.alert is not None:
        summary = None
        if act.alert.summary is not None:
            summary, errs = compile_value(act.alert.summary, ctx)
            for e in errs:
                problem((*loc, "alert", "summary"), f"action '{name}': {e}")
        return CompiledAction(name, "alert", severity=act.alert.severity, summary=summary)
    assert act.webhook is not None
    action, problems = compile_webhook(name, act.webhook)
    for where, message in problems:
        problem((*loc, "webhook", *where), message)
    return action
