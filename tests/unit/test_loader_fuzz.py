"""Fuzz the flow loader: random and mutated YAML always gives FlowError (exit 2), never a crash."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from observer.errors import FlowError
from observer.flows.compiler import load_registry
from tests.unit.replay_harness import BASE_FLOW

fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load(text: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d, "flow.yaml")
        f.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_registry([f])
        except FlowError as exc:
            assert exc.problems and all(p.file == str(f) for p in exc.problems)
            assert all(p.message for p in exc.problems)


@fuzz
@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    load(text)


@fuzz
@given(st.data())
def test_mutated_flow(data: st.DataObject) -> None:
    lines = BASE_FLOW.splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["delete", "dup", "truncate", "replace", "indent"]))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "truncate":
            lines[i] = lines[i][: data.draw(st.integers(0, max(0, len(lines[i]))))]
        elif op == "replace":
            lines[i] = lines[i].replace(
                ":", data.draw(st.sampled_from(["", " [", ": {", ":-", ": 1"])), 1
            )
        else:
            lines[i] = "  " + lines[i]
    load("\n".join(lines))


@fuzz
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "flow",
                        "version",
                        "steps",
                        "sources",
                        "on",
                        "step",
                        "within",
                        "actions",
                        "paths",
                        "sla",
                        "errors",
                        "topic",
                        "type",
                    ]
                ),
                c,
                max_size=4,
            )
        ),
        max_leaves=20,
    )
)
def test_random_structures(doc: object) -> None:
    import json

    load(json.dumps(doc))  # JSON is YAML


def test_cli_never_prints_a_traceback(tmp_path: Path) -> None:
    for text in [
        "flow: [",
        "\x00\x01",
        "steps: !!python/object:os.system {}",
        "{a: 1, a: 2}",
        "- - - -",
    ]:
        f = tmp_path / "f.yaml"
        f.write_text(text)
        res = subprocess.run(
            [sys.executable, "-m", "observer.cli", "validate", str(f)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 2, (text, res.stderr)
        assert "Traceback" not in res.stderr and str(f) in res.stderr
