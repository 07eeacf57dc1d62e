"""Which build of the hot path runs (observer/build.py): the compiled modules only while every
source is the one they were built from; else all of them from source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from observer import build

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import json, observer.engine.core as c, observer.runtime.batch as b; from observer import build;"
    "i = build.info(); print(json.dumps([i.compiled, i.why_not, c.__file__, b.__file__]))"
)


def _probe(**env: str) -> tuple[bool, str | None, str, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
    ).stdout
    compiled, why_not, core, batch = json.loads(out)
    return compiled, why_not, core, batch


def _source_digest(module: str) -> str:
    return build._digest(ROOT / (module.replace(".", "/") + ".py"))


def test_what_runs_is_what_the_build_record_says() -> None:
    compiled, why_not, core, batch = _probe(OBSERVER_PURE_PYTHON="")
    if os.environ.get("OBSERVER_REQUIRE_COMPILED") == "1":  # set by .ci/run
        assert compiled, why_not
    if compiled:
        assert core.endswith(".so") and batch.endswith(".so")
    else:  # not compiled at install, or a source changed since: every module from source
        assert why_not and core.endswith("core.py") and batch.endswith("batch.py")


def test_observer_pure_python_runs_the_sources() -> None:
    compiled, why_not, core, batch = _probe(OBSERVER_PURE_PYTHON="1")
    assert not compiled and why_not == "OBSERVER_PURE_PYTHON is set"
    assert core.endswith("observer/engine/core.py") and batch.endswith("runtime/batch.py")


def test_a_changed_source_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OBSERVER_PURE_PYTHON", raising=False)
    sources = {m: _source_digest(m) for m in ("observer.engine.core", "observer.ingest")}
    manifest: dict[str, object] = {"compiled": True, "sources": sources}
    assert build._why_sources(manifest, sources) is None
    changed = {**sources, "observer.ingest": "0" * 32}
    why = build._why_sources(manifest, changed)
    assert why == "observer/ingest.py changed since the install built it (pip install -e . again)"


def test_a_build_without_a_compiler_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OBSERVER_PURE_PYTHON", raising=False)
    manifest: dict[str, object] = {"compiled": False, "why_not": "mypyc is not installed"}
    assert build._why_sources(manifest, {}) == "not compiled at install: mypyc is not installed"


def test_the_sources_first_finder_loads_sources_of_the_listed_modules_only() -> None:
    finder = build._SourcesFirst(["observer.engine.core"])
    spec = finder.find_spec("observer.engine.core", None)
    assert spec is not None and spec.origin == str(ROOT / "observer/engine/core.py")
    assert finder.find_spec("observer.engine.state", None) is None
