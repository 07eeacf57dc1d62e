"""`schemas/flow.schema.json`: committed as generated, accepts every flow we ship, and agrees with
the loader on what is a valid flow document (short forms included)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError
from ruamel.yaml import YAML

from observer.flows.jsonschema import (
    DURATION_PATTERN,
    OBJECTIVE_PATTERN,
    SCHEMA_PATH,
    WARN_PATTERN,
    flow_json_schema,
    render_schema,
)
from observer.flows.loader import flow_files
from observer.flows.spec import FlowSpec
from observer.timefmt import parse_duration

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = Draft202012Validator(flow_json_schema())


def documents(path: Path) -> list[Any]:
    yaml = YAML(typ="safe", pure=True)
    return [d for d in yaml.load_all(path.read_text(encoding="utf-8")) if d is not None]


FLOW_DOCS = [
    pytest.param(doc, id=f"{f.relative_to(ROOT)}#{i}")
    for f in flow_files(ROOT / "flows")
    for i, doc in enumerate(documents(f))
]

MINIMAL: dict[str, Any] = {
    "flow": "shop",
    "version": 1,
    "sources": {"orders": {"topic": "orders", "type": "value.type"}},
    "steps": [
        {"step": "placed", "on": "orders.Placed", "capture": "value.total"},
        {
            "step": "paid",
            "on": ["orders.Paid", "orders.Settled"],
            "after": "placed",
            "within": "10s",
            "warn": "80%",
            "if_missing": "cancel",
            "if_late": ["cancel"],
            "if_warning": {"do": ["cancel"], "then": "comp", "alert": False},
        },
    ],
    "errors": [{"on": "orders.Failed", "do": "cancel", "then": "comp", "alert": False}],
    "paths": {"comp": {"outcome": "compensated", "steps": []}},
    "sla": {"within": "PT1H", "warn": "50m", "if_breached": "cancel"},
    "actions": {"cancel": {"publish": {"topic": "cmds", "value": {"type": "Cancel"}}}},
}


def model_accepts(doc: dict[str, Any]) -> bool:
    try:
        FlowSpec.model_validate(doc)
    except ValidationError:
        return False
    return True


def schema_accepts(doc: dict[str, Any]) -> bool:
    return bool(VALIDATOR.is_valid(doc))


def changed(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """MINIMAL with the node at `path` set to `value` (or removed, for `...`)."""
    doc = copy.deepcopy(MINIMAL)
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


def test_committed_schema_is_generated() -> None:
    committed = (ROOT / SCHEMA_PATH).read_text(encoding="utf-8")
    assert committed == render_schema(), (
        "schemas/flow.schema.json is out of date: run `python -m observer.flows.jsonschema`"
    )


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(flow_json_schema())


def test_flows_are_shipped() -> None:
    assert len(FLOW_DOCS) >= 4


@pytest.mark.parametrize("doc", FLOW_DOCS)
def test_every_shipped_flow_document_is_valid(doc: Any) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(doc)
    ]
    assert errors == []


def test_short_forms_are_accepted() -> None:
    assert model_accepts(MINIMAL)
    assert schema_accepts(MINIMAL)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("flow",), "Shop"),  # flow names are lower case
        (("version",), 0),
        (("sources",), {}),
        (("steps",), []),
        (("surprise",), 1),  # unknown key
        (("steps", 0, "step"), "placed-1"),  # step names are identifiers
        (("steps", 0, "on"), "OrderPlaced"),  # not <source>.<EventType>
        (("steps", 0, "on"), []),
        (("steps", 0, "on"), 5),
        (("steps", 0, "capture"), "total"),  # not a selector
        (("steps", 1, "within"), "20 parsecs"),
        (("steps", 1, "within"), 20),
        (("steps", 1, "warn"), "soon"),
        (("steps", 1, "optional"), "maybe"),
        (("steps", 1, "if_missing"), {"do": ["cancel"], "page": True}),
        (("steps", 1, "if_missing"), 7),
        (("steps", 1, "colour"), "red"),
        (("sources", "orders", "type"), "type"),  # not a selector
        (("sources", "orders", "format"), "xml"),
        (("sources", "orders", "schema"), "schemas/x.avsc"),  # schema only for avro
        (("sources", "orders", "topic"), ...),
        (("errors", 0, "on"), ...),
        (("errors", 0, "capture_all"), True),
        (("paths", "comp", "outcome"), ...),
        (("sla", "within"), ...),
        (("buffer",), "a while"),
        (("actions", "cancel"), {}),  # no action kind
        (
            ("actions", "cancel"),  # two action kinds
            {"publish": {"topic": "t"}, "webhook": {"url": "http://127.0.0.1:1/"}},
        ),
        (("actions", "cancel", "publish", "topic"), ...),
        (("actions", "cancel", "publish", "headers"), {"n": 1}),
        (("actions", "cancel", "publish", "colour"), "red"),
        (("actions", "cancel"), {"alert": {"severity": "fatal"}}),
        (("actions", "cancel"), {"webhook": {"severity": "critical"}}),
        (("slo",), {"objective": "99.5", "within": "30m"}),  # not a percentage
        (("slo",), {"objective": 99.5, "within": "30m"}),
        (("slo",), {"objective": "99.5%"}),  # no within
        (("slo",), {"objective": "99.5%", "within": "a while"}),
        (("slo",), {"objective": "99.5%", "within": "30m", "window": "a month"}),
        (("slo",), {"objective": "99.5%", "within": "30m", "budget": "0.5%"}),
        (("slo",), "99.5%"),
        (("aliases",), {"tracking": {"from": "orders.Booked"}}),  # no value
        (("aliases",), {"tracking": {"value": "value.t"}}),  # no from
        (("aliases",), {"tracking": {"from": [], "value": "value.t"}}),
        (("aliases",), {"tracking": {"from": "Booked", "value": "value.t"}}),
        (("aliases",), {"tracking": {"from": "orders.Booked", "value": "t"}}),
        (("aliases",), {"Tracking": {"from": "orders.Booked", "value": "value.t"}}),
        (("aliases",), {"tracking": {"from": "orders.Booked", "value": "value.t", "x": 1}}),
        (("sources", "orders", "via"), "Tracking"),
        (("if_alias_conflict",), 7),
    ],
)
def test_invalid_documents_are_rejected_by_schema_and_model(
    path: tuple[str | int, ...], value: Any
) -> None:
    doc = changed(path, value)
    assert not schema_accepts(doc)
    assert not model_accepts(doc)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("paths",), {"comp.x": {"outcome": "x"}}),  # path names are identifiers
        (("actions",), {"cancel order": {"alert": {}}}),  # action names: identifiers and '-'
    ],
)
def test_names_the_language_reserves_are_checked_by_the_schema(
    path: tuple[str | int, ...], value: Any
) -> None:
    assert not schema_accepts(changed(path, value))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("steps", 1, "after"), []),
        (("steps", 1, "after"), None),
        (("steps", 1, "warn"), "PT8S"),
        (("steps", 1, "within"), "P1DT2H"),
        (("steps", 0, "capture"), ["value.items.0.sku", "header.trace", "key", "timestamp"]),
        (
            ("sources", "orders"),
            {"topic": "o", "format": "avro", "schema": "s.avsc", "type": "key"},
        ),
        (("sources", "orders"), {"topic": "o", "format": "avro", "type": "header.ce_type"}),
        (("actions", "cancel"), {"webhook": {"url": "http://127.0.0.1:9099/x"}}),
        (("actions", "cancel"), {"alert": {"severity": "info", "summary": "{{ key }}"}}),
        (("actions", "cancel", "publish", "value"), "raw {{ key }}"),
        (("actions", "cancel", "publish", "schema"), "schemas/x.avsc"),
        (("actions",), {"page-oncall": {"alert": {}}}),
        (("key",), "order_id"),
        (("description",), "text"),
        (("slo",), {"objective": "99.5%", "within": "30m", "window": "28d"}),
        (("slo",), {"objective": "99.95 %", "within": "PT30M"}),
        (("slo",), {"objective": "90%", "within": "1.5h", "window": "P7D"}),
        (("aliases",), {"tracking": {"from": "orders.Booked", "value": "value.t"}}),
        (("aliases",), {"tracking_no2": {"from": ["orders.Booked"], "value": "header.t"}}),
        (("sources", "orders", "via"), "tracking"),
        (("if_alias_conflict",), "cancel"),
        (("if_alias_conflict",), {"do": ["cancel"], "alert": False}),
    ],
)
def test_valid_variants_are_accepted_by_schema_and_model(
    path: tuple[str | int, ...], value: Any
) -> None:
    doc = changed(path, value)
    assert model_accepts(doc)
    assert schema_accepts(doc)


# plain spaces only: Python's \s also matches \x1c-\x1f, which float() and JSON Schema do not
_duration_text = st.one_of(
    st.from_regex(r"\A ?[0-9]{1,3}(\.[0-9]{1,2})? ?(ms|s|m|h|d|x|) ?\Z"),
    st.from_regex(
        r"\A[Pp]([0-9]{1,2}[Dd])?([Tt]([0-9]{1,2}[Hh])?([0-9]{1,2}(\.[0-9])?[Mm])?([0-9][Ss])?)?\Z"
    ),
    st.text(alphabet="0123456789.PTDHMSptdhms %", max_size=8),
)


def _reads(parse: Any, text: str) -> bool | None:
    """True if `parse` reads `text`, False if not, None if only because it is zero or longer
    than the observer keeps (bounds the schema's pattern leaves to `observer validate`)."""
    try:
        parse(text)
    except ValueError as exc:
        bound = "not a positive duration" in str(exc) or "longer than the longest" in str(exc)
        return None if bound else False
    return True


@given(_duration_text)
def test_duration_pattern_agrees_with_parse_duration(text: str) -> None:
    reads = _reads(parse_duration, text)
    if reads is not None:
        assert bool(re.search(DURATION_PATTERN, text)) is reads, text


@given(st.one_of(_duration_text, st.from_regex(r"\A ?[0-9]{1,3}(\.[0-9])? ?% ?\Z")))
def test_warn_pattern_agrees_with_the_loader(text: str) -> None:
    doc = changed(("steps", 1, "warn"), text)
    doc["steps"][1]["within"] = "1000d"  # so any duration warn is shorter
    loader_error: str | None = None
    try:
        FlowSpec.model_validate(doc)
    except ValidationError as exc:
        loader_error = str(exc)
    if loader_error is not None and (
        "positive duration" in loader_error or "between 0% and 100%" in loader_error
    ):
        return  # zero, or a percentage out of range: the pattern cannot say, the loader does
    assert bool(re.search(WARN_PATTERN, text)) is (loader_error is None), text


@given(st.one_of(st.from_regex(r"\A ?[0-9]{1,3}(\.[0-9]{0,2})? ?%? ?\Z"), _duration_text))
def test_objective_pattern_agrees_with_the_loader(text: str) -> None:
    doc = changed(("slo",), {"objective": text, "within": "30m"})
    loader_error: str | None = None
    try:
        FlowSpec.model_validate(doc)
    except ValidationError as exc:
        loader_error = str(exc)
    if loader_error is not None and "between 0% and 100%" in loader_error:
        return  # out of range: the pattern cannot say, the loader does
    assert bool(re.search(OBJECTIVE_PATTERN, text)) is (loader_error is None), text


def test_schema_file_is_sorted_json_with_trailing_newline() -> None:
    text = (ROOT / SCHEMA_PATH).read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert json.loads(text) == flow_json_schema()
