"""The JSON Schema of a flow document, for editors and CI: `schemas/flow.schema.json`.

Generated from `FlowSpec` and patched where the pydantic models accept more than their
generated schema says: fields normalised by before-validators (`on`, `after`, `capture`,
`errors[].do`, handlers) also take their short forms (a single string; a handler as a list of
action names), and names, selectors and durations get the patterns the models check. The schema
is an aid: the compiler still checks what a schema cannot (cross-references, templates, warn
shorter than within, zero durations).

Regenerate with `python -m observer.flows.jsonschema`; `tests/unit/test_flow_schema.py` fails
when the committed file drifts from what this module generates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from observer.flows import spec, webhook
from observer.flows.spec import FlowSpec

__all__ = [
    "DURATION_PATTERN",
    "OBJECTIVE_PATTERN",
    "SCHEMA_ID",
    "SCHEMA_PATH",
    "WARN_PATTERN",
    "flow_json_schema",
    "render_schema",
]

SCHEMA_PATH = Path("schemas/flow.schema.json")
SCHEMA_ID = "urn:choreography-observer:schemas:flow.schema.json"

_NUM = r"\d+(\.\d+)?"
_ISO_TIME = rf"[Tt](?=\d)({_NUM}[Hh])?({_NUM}[Mm])?({_NUM}[Ss])?"
# What observer.timefmt.parse_duration reads: 250ms, 30s, 5m, 4h, 2d, or ISO-8601 (PT5M, P1DT2H,
# any letter case). Zero passes the pattern; the loader rejects it.
DURATION_PATTERN = rf"^\s*({_NUM}\s*(ms|s|m|h|d)|[Pp]({_NUM}[Dd]({_ISO_TIME})?|{_ISO_TIME}))\s*$"
# warn: a percentage of `within` (strictly between 0 and 100, checked by the loader; the loader
# reads the number with float(), so `80.%` and `.5%` pass too) or a duration
WARN_PATTERN = rf"^\s*(\d+\.?\d*|\.\d+)\s*%\s*$|{DURATION_PATTERN}"
# slo.objective: a percentage (strictly between 0 and 100, checked by the loader)
OBJECTIVE_PATTERN = r"^\s*(\d+\.?\d*|\.\d+)\s*%\s*$"


def _string(pattern: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string"}
    if pattern is not None:
        out["pattern"] = pattern
    return out


def _one_or_many(item: dict[str, Any], min_items: int = 0) -> list[dict[str, Any]]:
    many: dict[str, Any] = {"type": "array", "items": item}
    if min_items:
        many["minItems"] = min_items
    return [item, many]


def _replace(prop: dict[str, Any], forms: list[dict[str, Any]], nullable: bool) -> None:
    """Replace a property's type with `anyOf: forms` (+ null), keeping its title/description."""
    keep = {k: v for k, v in prop.items() if k in ("title", "description", "default")}
    prop.clear()
    prop.update(keep)
    prop["anyOf"] = [*forms, {"type": "null"}] if nullable else forms


def _set_pattern(prop: dict[str, Any], pattern: str) -> None:
    """Add `pattern` to a string property (also inside `anyOf: [string, null]`)."""
    if prop.get("type") == "string":
        prop["pattern"] = pattern
        return
    for alt in prop.get("anyOf", []):
        if alt.get("type") == "string":
            alt["pattern"] = pattern


def flow_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one flow document (one YAML document of a file)."""
    schema: dict[str, Any] = FlowSpec.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema["$defs"]
    event_ref = _string(spec.EVENT_REF.pattern)
    selector = _string(spec.SELECTOR.pattern)  # the pattern check_selector applies

    # -- the flow --------------------------------------------------------------------------------
    top = schema["properties"]
    _set_pattern(top["flow"], spec.FLOW_NAME.pattern)
    _set_pattern(top["key"], spec.IDENT.pattern)
    for name in ("buffer", "retain", "expire"):
        _set_pattern(top[name], DURATION_PATTERN)
    # source names are what `on: <source>.<EventType>` can refer to
    top["sources"]["propertyNames"] = {"pattern": r"^[A-Za-z_][A-Za-z0-9_-]*$"}
    top["paths"]["propertyNames"] = {"pattern": spec.IDENT.pattern}
    top["actions"]["propertyNames"] = {"pattern": spec.ACTION_NAME.pattern}

    # -- sources ---------------------------------------------------------------------------------
    source = defs["SourceSpec"]
    for name in ("type", "key", "id", "time"):
        _set_pattern(source["properties"][name], selector["pattern"])
    # `schema` is for avro sources only
    source["if"] = {"not": {"required": ["format"], "properties": {"format": {"const": "avro"}}}}
    source["then"] = {"properties": {"schema": {"type": "null"}}}
    # an action's `subject` (the registry's wire format) names the subject of its `schema`
    defs["PublishSpec"]["dependentRequired"] = {"subject": ["schema"]}

    # -- steps -----------------------------------------------------------------------------------
    step = defs["StepSpec"]["properties"]
    _set_pattern(step["step"], spec.IDENT.pattern)
    _replace(step["on"], _one_or_many(event_ref, min_items=1), nullable=False)
    _replace(step["after"], _one_or_many(_string(spec.IDENT.pattern)), nullable=True)
    _replace(step["capture"], _one_or_many(selector), nullable=False)
    _set_pattern(step["within"], DURATION_PATTERN)
    _set_pattern(step["warn"], WARN_PATTERN)

    # -- handlers: a list of action names (or one name), or {do, then, alert} --------------------
    handler_object = defs["HandlerSpec"]
    action_name = _string(spec.ACTION_NAME.pattern)
    handler_object["properties"]["do"]["items"] = action_name
    _set_pattern(handler_object["properties"]["then"], spec.IDENT.pattern)
    defs["HandlerSpec"] = {
        "title": "HandlerSpec",
        "description": handler_object.pop("description"),
        "anyOf": [*_one_or_many(action_name), handler_object],
    }

    # -- errors ----------------------------------------------------------------------------------
    error = defs["ErrorSpec"]["properties"]
    _replace(error["on"], _one_or_many(event_ref, min_items=1), nullable=False)
    _replace(error["do"], _one_or_many(action_name), nullable=False)
    _set_pattern(error["then"], spec.IDENT.pattern)
    if "capture" in error:  # accepted on errors[] once the model has it, like a step's capture
        _replace(error["capture"], _one_or_many(selector), nullable=False)

    _alias_patterns(top, defs, event_ref, selector)

    _sla_slo_and_action_patterns(defs)

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "Choreography observer flow",
        "description": (
            "One flow document of a flow file (a file may hold several as YAML documents). "
            "See docs/flow-language.md."
        ),
    }


def _sla_slo_and_action_patterns(defs: dict[str, Any]) -> None:
    """The flow's SLA and SLO durations; an action is exactly one of publish, alert, webhook."""
    # -- sla -------------------------------------------------------------------------------------
    sla = defs["SlaSpec"]["properties"]
    _set_pattern(sla["within"], DURATION_PATTERN)
    _set_pattern(sla["warn"], WARN_PATTERN)

    # -- slo -------------------------------------------------------------------------------------
    slo = defs["SloSpec"]["properties"]
    _set_pattern(slo["objective"], OBJECTIVE_PATTERN)
    _set_pattern(slo["within"], DURATION_PATTERN)
    _set_pattern(slo["window"], DURATION_PATTERN)

    # -- actions: exactly one of publish, alert, webhook -----------------------------------------
    defs["ActionSpec"]["minProperties"] = 1
    defs["ActionSpec"]["maxProperties"] = 1
    hook = defs["WebhookSpec"]["properties"]
    _set_pattern(hook["url"], webhook.URL_PATTERN)
    hook["headers"]["propertyNames"] = {"pattern": webhook.HEADER_NAME.pattern}
    _set_pattern(defs["SignSpec"]["properties"]["secret"], webhook.SECRET_REF_PATTERN)


def _alias_patterns(
    top: dict[str, Any], defs: dict[str, Any], event_ref: dict[str, Any], selector: dict[str, Any]
) -> None:
    """Aliases (correlation by a second id): names, `from`, `value` and a source's `via`."""
    top["aliases"]["propertyNames"] = {"pattern": spec.ALIAS_NAME.pattern}
    _set_pattern(defs["SourceSpec"]["properties"]["via"], spec.ALIAS_NAME.pattern)
    alias = defs["AliasSpec"]["properties"]
    _replace(alias["from"], _one_or_many(event_ref, min_items=1), nullable=False)
    _set_pattern(alias["value"], selector["pattern"])


def render_schema() -> str:
    """The schema file's text: sorted keys, indent 2, trailing newline."""
    return json.dumps(flow_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    """Write `schemas/flow.schema.json` (relative to the current directory, the repo root)."""
    SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
    SCHEMA_PATH.write_text(render_schema(), encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
