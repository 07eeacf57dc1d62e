"""The flows we ship (`flows/`): each file loads and compiles, all of them deploy together, the
editor header points at the schema, and every flow's happy path, played on time through
`observer replay` (Avro sources encoded with their schema), completes with no deviation and
publishes nothing but its outcome."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest

from observer.flows.compiled import CompiledFlow, CompiledSource
from observer.flows.compiler import compile_flows
from observer.flows.loader import LoadedFlow, flow_files, load_flow_file, load_flows
from observer.flows.spec import SourceSpec
from observer.replay import run_replay
from observer.timefmt import format_time

ROOT = Path(__file__).resolve().parents[2]
FLOW_FILES = flow_files(ROOT / "flows")
IDS = [str(f.relative_to(ROOT)) for f in FLOW_FILES]
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # relative paths in flows (Avro schemas) are resolved from the working directory
    monkeypatch.chdir(ROOT)


def test_there_are_flows() -> None:
    assert ROOT / "flows" / "checkout.yaml" in FLOW_FILES
    assert any(f.parent.name == "examples" for f in FLOW_FILES)


@pytest.mark.parametrize("path", FLOW_FILES, ids=IDS)
def test_file_loads_without_problems(path: Path) -> None:
    flows, problems = load_flow_file(path.relative_to(ROOT))
    assert [str(p) for p in problems] == []
    assert flows


@pytest.mark.parametrize("path", FLOW_FILES, ids=IDS)
def test_file_compiles(path: Path) -> None:
    registry = compile_flows(load_flows([path.relative_to(ROOT)]))
    assert list(registry)


def test_all_flows_deploy_together() -> None:
    registry = compile_flows(load_flows(["flows"]))
    names = [(f.name, f.version) for f in registry]
    assert len(names) == len(set(names))
    assert ("checkout", 1) in names


@pytest.mark.parametrize("path", FLOW_FILES, ids=IDS)
def test_editor_header_points_at_the_schema(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix)
    target = (path.parent / first.removeprefix(prefix)).resolve()
    assert target == (ROOT / "schemas" / "flow.schema.json").resolve()


# -- the happy path of every flow, on time --------------------------------------------------------


def _flows() -> Iterator[tuple[Path, LoadedFlow, CompiledFlow]]:
    for path in FLOW_FILES:
        for loaded in load_flows([path.relative_to(ROOT)]):
            (compiled,) = compile_flows([loaded])
            yield path, loaded, compiled


def _avro_blank(schema: Any) -> Any:
    """A value of an Avro type with every field at its default (or zero)."""
    if isinstance(schema, list):
        return None if "null" in schema else _avro_blank(schema[0])
    if isinstance(schema, str):
        return {"string": "", "int": 0, "long": 0, "boolean": False, "double": 0.0}.get(schema)
    kind = schema["type"]
    if kind == "record":
        return {
            f["name"]: f["default"] if "default" in f else _avro_blank(f["type"])
            for f in schema["fields"]
        }
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "array":
        return []
    return _avro_blank(kind)


def _record(
    spec: SourceSpec,
    source: CompiledSource,
    etype: str,
    key: str,
    eid: str,
    t: int,
    extra: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """A replay record that the source's selectors read as (etype, key, eid, t), and each
    (selector, text) of `extra` (alias values) as that text."""
    schema = source.avro_schema
    avro = schema is not None
    value: dict[str, Any] = _avro_blank(schema) if avro else {}
    headers: dict[str, str] = {}
    rec: dict[str, Any] = {"topic": spec.topic, "key": key, "timestamp": t}
    for selector, datum in (
        (spec.type, etype),
        (spec.key, key),
        (spec.time, t if avro else format_time(t)),
        (spec.id or "", eid),
        *extra,
    ):
        if selector.startswith("value."):
            node = value
            parts = selector.split(".")[1:]
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = datum
        elif selector.startswith("header."):
            headers[selector.removeprefix("header.")] = str(datum)
    if schema is not None:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, value)
        rec["value"] = base64.b64encode(buf.getvalue()).decode()
    else:
        rec["value"] = value
    rec["headers"] = headers
    return rec


def happy_path(loaded: LoadedFlow, flow: CompiledFlow, key: str) -> list[dict[str, Any]]:
    """Every main-path step (optional ones too) at a tenth of its window after its anchors."""
    times: dict[int, int] = {}
    main = [flow.steps[i] for i in flow.paths[0].steps]
    while len(times) < len(main):
        for step in main:
            if step.index in times or any(a not in times for a in step.anchors):
                continue
            anchor = max((times[a] for a in step.anchors), default=T0)
            window = step.warn_ms or step.within_ms or 10_000
            times[step.index] = T0 if step.is_start else anchor + max(1, window // 10)
    records = []
    value_of = {a.name: f"{a.name}-{key}" for a in flow.aliases}  # each alias's value
    for step in main:
        source, etype = sorted(step.on)[0]
        eid = f"{step.name}-{key}"
        spec = loaded.spec.sources[source]
        extra = tuple((a.value, value_of[a.name]) for a in flow.aliases if (source, etype) in a.on)
        by = key if spec.via is None else value_of[spec.via]  # via: keyed by the alias value
        records.append(
            _record(spec, flow.sources[source], etype, by, eid, times[step.index], extra)
        )
    return sorted(records, key=lambda r: r["timestamp"])


@pytest.mark.parametrize(
    ("path", "loaded", "flow"),
    list(_flows()),
    ids=[f"{p.relative_to(ROOT)}:{f.name}" for p, _, f in _flows()],
)
def test_happy_path_on_time_publishes_only_its_outcome(
    path: Path, loaded: LoadedFlow, flow: CompiledFlow, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    records = happy_path(loaded, flow, "k-1")
    events.write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = [
        orjson.loads(x) for x in run_replay(str(path.relative_to(ROOT)), str(events), None, [])
    ]
    assert len(lines) == 1, lines
    outcome = lines[0]["value"]
    assert lines[0]["topic"] == "observer.outcomes"
    assert (outcome["flow"], outcome["outcome"], outcome["deviations"]) == (
        flow.name,
        "completed",
        [],
    )
    # an optional step seen after the last required one comes after the end: recorded only
    required = {flow.steps[i].name for i in flow.paths[0].required}
    assert required <= set(outcome["steps"]) <= {flow.steps[i].name for i in flow.paths[0].steps}


def test_checkout_windows_fit_the_demo_and_the_sla() -> None:
    """The demo runs checkout in real time: windows of seconds, and a checkout whose every step
    is on time (each at its very deadline) never breaches the SLA."""
    (flow,) = compile_flows(load_flows(["flows/checkout.yaml"]))
    assert flow.sla is not None
    windows = [s.within_ms for s in flow.steps if s.within_ms is not None]
    assert all(5_000 <= w <= 30_000 for w in windows)
    latest: dict[int, int] = {}
    for step in flow.steps:  # anchors are declared before the steps that name them
        if step.path == 0:
            start = max((latest[a] for a in step.anchors), default=0)
            latest[step.index] = start + (step.within_ms or 0)
    required = flow.paths[0].required
    assert max(latest[i] for i in required) <= flow.sla.within_ms


DOCS = [ROOT / "docs" / "flow-language.md", ROOT / "docs" / "how-the-observer-decides.md"]


def _complete_doc_flows() -> list[Any]:
    """The ```yaml blocks of the docs that are whole flows (not fragments of one)."""
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.S)):
            if re.search(r"^flow: ", block, re.M) and re.search(r"^steps:", block, re.M):
                out.append(pytest.param(block, id=f"{doc.name}#{i}"))
    return out


@pytest.mark.parametrize("block", _complete_doc_flows())
def test_flows_in_the_docs_are_valid(block: str, tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(block, encoding="utf-8")
    assert list(compile_flows(load_flows([tmp_path / "flow.yaml"])))


def test_the_docs_show_flows() -> None:
    assert len(_complete_doc_flows()) >= 2
