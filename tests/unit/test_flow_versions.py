"""Flow versions as kept with the group's state (`flows/stored.py`): what "the same definition"
means, rebuilding exactly from what is stored (Avro schemas included, the files gone), the
rules of deploying onto stored versions, and an instance never run on another version — by the
engine, and by replay's `--deploy`."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from observer.engine.core import Engine, VersionUnavailable
from observer.engine.state import Event, KeySlot
from observer.errors import FlowError
from observer.flows.compiler import compile_flows
from observer.flows.loader import load_flow_text
from observer.flows.stored import (
    StoredFlow,
    load_deployable,
    plan_deploy,
    rebuild,
    stored_flow,
)
from tests.unit.replay_harness import BASE_FLOW, T0, ev, run

REPO = Path(__file__).resolve().parents[2]


def captured(text: str, file: str = "shop.yaml") -> list[StoredFlow]:
    loaded, problems = load_flow_text(text, file)
    assert problems == []
    out = []
    for lf in loaded:
        sf, bad = stored_flow(lf)
        assert bad == [] and sf is not None
        out.append(sf)
    return out


def test_comments_layout_and_key_order_are_not_a_change_but_a_window_is() -> None:
    (base,) = captured(BASE_FLOW)
    relaid = "# a comment\n" + BASE_FLOW.replace(
        "orders: {topic: orders, type: value.type,", "orders: {type: value.type,  topic: orders,"
    )
    (same,) = captured(relaid, "elsewhere/shop.yaml")
    (changed,) = captured(BASE_FLOW.replace("within: 10s", "within: 11s"))
    assert same.digest == base.digest
    assert changed.digest != base.digest
    assert (base.flow, base.version, base.line) == ("shop", 1, 3)


def test_each_document_of_a_file_is_kept_and_rebuilt_on_its_own() -> None:
    other = BASE_FLOW.replace("flow: shop", "flow: other")
    first, second = captured(BASE_FLOW + "---\n" + other)
    assert (first.document, second.document) == (0, 1)
    (alone,) = captured(BASE_FLOW)
    assert first.digest == alone.digest  # the other document does not count
    assert rebuild(second).name == "other"
    (first_edited, _) = captured(BASE_FLOW + "---\n" + other.replace("10s", "12s"))
    assert first_edited.digest == first.digest


def test_a_stored_version_survives_a_json_round_trip_and_rebuilds_the_same_flow() -> None:
    (sf,) = captured(BASE_FLOW)
    back = StoredFlow.from_json(sf.to_json())
    assert back == sf
    flow = rebuild(back)
    (original,) = compile_flows(load_flow_text(BASE_FLOW, "shop.yaml")[0])
    assert (flow.name, flow.version, flow.file) == ("shop", 1, "shop.yaml")
    assert [(s.name, s.within_ms, s.warn_ms) for s in flow.steps] == [
        (s.name, s.within_ms, s.warn_ms) for s in original.steps
    ]
    with pytest.raises(ValueError, match="not a stored flow version"):
        StoredFlow.from_json(b'{"flow": "shop"}')


def test_avro_schemas_are_kept_with_the_flow_and_rebuilt_without_the_files(
    tmp_path: Path,
) -> None:
    (tmp_path / "flows" / "examples").mkdir(parents=True)
    shutil.copy(REPO / "flows/examples/returns.yaml", tmp_path / "flows/examples")
    shutil.copytree(REPO / "schemas", tmp_path / "schemas")
    _registry, (sf,) = load_deployable([tmp_path / "flows/examples/returns.yaml"])
    assert sorted(sf.schemas) == [
        "../../schemas/refund-command.avsc",
        "../../schemas/return-events.avsc",
    ]
    shutil.rmtree(tmp_path)
    flow = rebuild(StoredFlow.from_json(sf.to_json()))
    assert all(s.avro_schema is not None for s in flow.sources.values() if s.format == "avro")
    # a schema whose JSON changed is another definition; a re-indented one is not
    schema = sf.schemas["../../schemas/return-events.avsc"]
    reindented = orjson.dumps(orjson.loads(schema), option=orjson.OPT_INDENT_2).decode()
    moved = {**sf.schemas, "../../schemas/return-events.avsc": reindented}
    assert _digest_with(sf, moved) == sf.digest
    edited = {
        **sf.schemas,
        "../../schemas/return-events.avsc": schema.replace("string", "bytes", 1),
    }
    assert _digest_with(sf, edited) != sf.digest


def _digest_with(sf: StoredFlow, schemas: dict[str, str]) -> str:
    (lf,) = load_flow_text(sf.text, sf.file, schemas)[0]
    again, _ = stored_flow(lf)
    assert again is not None
    return again.digest


def test_a_stored_document_that_no_longer_compiles_says_where_and_why() -> None:
    (sf,) = captured(BASE_FLOW)
    broken = StoredFlow.from_json(sf.to_json().replace(b"within: 10s", b"within: ten seconds"))
    with pytest.raises(FlowError, match=r"shop.yaml:\d+: .*ten seconds"):
        rebuild(broken)


def test_deploying_adds_new_versions_keeps_equal_ones_and_refuses_changed_ones() -> None:
    (v1,) = captured(BASE_FLOW)
    (v2,) = captured(BASE_FLOW.replace("version: 1", "version: 2"))
    (v1_changed,) = captured(BASE_FLOW.replace("10s", "12s"), "flows/shop.yaml")
    stored = {v1.field: v1}
    plan = plan_deploy([v1, v2], stored)
    assert (plan.added, plan.unchanged, plan.refused) == ([v2], [v1], [])
    plan = plan_deploy([v1_changed, v2], stored)
    (problem,) = plan.refused
    assert str(problem) == (
        "flows/shop.yaml:3: flow 'shop': version 1 is already deployed with a different "
        "definition (from shop.yaml); a changed flow needs a new version"
    )


def test_the_engine_never_runs_an_instance_on_another_version() -> None:
    v1 = compile_flows(load_flow_text(BASE_FLOW, "v1.yaml")[0])
    engine = Engine(v1)
    slot = KeySlot("shop", "o1")
    engine.apply(slot, Event("orders", "Placed", "o1", "e1", T0, {}), T0)
    assert slot.instance is not None and slot.instance.version == 1
    v2_only = compile_flows(
        load_flow_text(BASE_FLOW.replace("version: 1", "version: 2"), "v2.yaml")[0]
    )
    engine.registry = v2_only  # v1 is gone: e.g. a restart given only v2, versions not kept
    paid = Event("pay", "Paid", "o1", "e2", T0 + 1000, {})
    with pytest.raises(
        VersionUnavailable, match=r"'shop' version 1 is not deployed \(deployed: v2\)"
    ):
        engine.apply(slot, paid, T0 + 1000)
    with pytest.raises(VersionUnavailable):
        engine.fire(slot, T0 + 60_000)


def test_replay_runs_open_instances_on_their_version_after_a_deploy(tmp_path: Path) -> None:
    v2 = tmp_path / "v2.yaml"
    v2.write_text(
        BASE_FLOW.replace("version: 1", "version: 2").replace("within: 10s", "within: 1m")
    )
    events = [ev("Placed", "o1", 0, total=1), ev("Placed", "o2", 5, total=2)]
    lines = run(tmp_path, events, until=T0 + 120_000, deploys=[(T0 + 1000, str(v2))])
    missing = [
        (x["value"]["key"], x["value"]["version"], x["timestamp"] - T0)
        for x in lines
        if x["topic"] == "observer.alerts"
        and x["value"]["kind"] == "missing"
        and x["value"]["step"] == "paid"
    ]
    assert missing == [("o1", 1, 10_000), ("o2", 2, 65_000)]
