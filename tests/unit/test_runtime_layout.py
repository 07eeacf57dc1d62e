"""The shape of the runtime and its adapters: small modules and functions, imports that only
go down the layers, adapters that do not import each other, and time read only through the
injected clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from observer.adapters.memory import ManualClock
from observer.runtime.backoff import Backoff, backoff_ms
from observer.runtime.every import Every

PACKAGE = Path(__file__).resolve().parents[2] / "observer"
CHECKED = sorted(PACKAGE.rglob("*.py"))  # every module of the package


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    assert path.read_text().count("\n") <= 500
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            assert lines <= 80, f"{path.name}: {node.name} has {lines} lines"


# Lower layers first; a module imports from its own layer or lower ones only.
LAYERS = [
    {
        "build",
        "errors",
        "limits",
        "timefmt",
        "topics",
        "jsonexact",
        "masking",
        "correlation",
        "record_size",
    },
    {"flows"},
    {"engine"},
    {
        "ingest",
        "replay",
        "metrics",
        "config",
        "redis_settings",
        "slo_rules",
        "backtest",
        "suggest",
        "guardrails",
        "health_report",
    },
    {"runtime", "console"},
    {"adapters"},
    {"http"},
    {"cli", "demo", "__main__"},
]


def _layer(module: str) -> int:
    top = module.split(".")[1] if module.startswith("observer.") else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer")


def test_imports_go_down_the_layers_only() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name in ("observer.__init__", "observer"):
            continue
        mine = _layer(name)
        for m in _imports(path):
            if m.startswith("observer.") and m != "observer":
                assert _layer(m) <= mine, f"{name} imports {m}, a higher layer"


def test_adapters_import_no_other_adapter() -> None:
    for path in sorted((PACKAGE / "adapters").rglob("*.py")):
        rel = path.relative_to(PACKAGE / "adapters")
        own = f"observer.adapters.{rel.parts[0].removesuffix('.py')}"
        bad = [
            m
            for m in _imports(path)
            if m.startswith("observer.adapters.") and not (m == own or m.startswith(own + "."))
        ]
        assert bad == [], f"adapters/{rel} imports {bad}"


def test_the_runtime_reads_time_only_through_its_clock() -> None:
    for path in sorted((PACKAGE / "runtime").glob("*.py")):
        assert "time" not in _imports(path), f"{path.name} imports time"


def test_every_is_due_once_per_interval_of_the_clock() -> None:
    clock = ManualClock()
    every = Every(1.0, clock.monotonic)
    assert every.due() and not every.due()
    clock.advance(0.5)
    assert not every.due()
    clock.advance(0.5)
    assert every.due()
    every.hurry()
    assert every.due()
    clock.advance(0.9)
    every.restart()
    clock.advance(0.9)
    assert not every.due()


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_a_success() -> None:
    b = Backoff(0.1, 0.5)
    assert [b.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.delay_s == 0.1
    assert [backoff_ms(n, 200, 1_000) for n in (1, 2, 3, 4, 5)] == [200, 400, 800, 1_000, 1_000]
