"""Fuzz the flow loader: random and mutated YAML always gives FlowError (exit 2), never a crash;
hostile flow files and templates (issue 12) never crash `observer validate`."""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from observer.cli import main
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


# -- issue 12: hostile flow files and templates ---------------------------------------------------
#
# Generated flow files that try to exhaust the validator: sizes from bytes to megabytes, deep
# nesting, aliases, extreme numbers, non-UTF-8 bytes, and templates built from the operators,
# filters, loops and methods that amplify. `observer validate` must answer 0 or 2, never a
# traceback. Time and memory are printed (not asserted: they depend on the machine's load).


FIGURES: dict[str, float] = {"inputs": 0, "exit 0": 0, "exit 2": 0, "crashes": 0, "slowest s": 0}

_ATOMS = st.sampled_from(
    [
        "7",
        "10**8",
        "99999",
        "2**63",
        "-1",
        "0",
        "1.5",
        "1e308",
        "'a'",
        "'%0100000000d'",
        "'{:>99999999}'",
        "key",
        "now",
        "steps.placed.value.total",
        "steps.placed.time",
        "deviation.kind",
        "[1, 2]",
        "[key, key]",
        "{'a': key}",
        "range(10)",
        "range(100000)",
        "none",
        "'x' * 1000",
    ]
)
_BINOPS = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "~", "==", "in"])
_FILTERS = st.sampled_from(
    [
        "length",
        "string",
        "list",
        "join(key)",
        "center(10**7)",
        "indent(999999)",
        "upper",
        "replace('a', 'aaaa')",
        "format(1)",
        "batch(10**6, 'x')",
        "sum",
        "tojson(99)",
        "map('string')",
        "sort",
        "first",
        "int",
        "round(2)",
        "wordwrap(1, wrapstring='xxxxx')",
    ]
)
_expressions = st.recursive(
    _ATOMS,
    lambda inner: st.one_of(
        st.tuples(inner, _BINOPS, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, _FILTERS).map(lambda t: f"({t[0]} | {t[1]})"),
        st.tuples(inner, st.sampled_from(["ljust(10**9)", "upper()", "split()", "zfill(99)"])).map(
            lambda t: f"{t[0]}.{t[1]}"
        ),
    ),
    max_leaves=8,
)
_templates = st.one_of(
    _expressions.map(lambda e: "{{ " + e + " }}"),
    st.tuples(_expressions, _expressions).map(lambda t: f"x {{{{ {t[0]} }}}} y {{{{ {t[1]} }}}}"),
    st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), _expressions).map(
        lambda t: (
            f"{{% for i in range({t[0]}) %}}{{% for j in range({t[1]}) %}}"
            f"{{{{ {t[2]} }}}}{{% endfor %}}{{% endfor %}}"
        )
    ),
    st.integers(1, 80).map(
        lambda n: (
            "{% set ns = namespace(s='ab') %}{% for i in range(" + str(n) + ") %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"
        )
    ),
    st.integers(1, 400).map(lambda n: "{{ " + "(" * n + "1" + ")" * n + " }}"),
)
_NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["1e400", ".inf", ".nan", "0x" + "f" * 40, "9" * 5000, "-0", "0o777"]),
)
_DURATIONS = st.one_of(
    st.sampled_from(["10s", "36500d", "36501d", "P99999999D", "PT0.0001S", "0s", "1e9s"]),
    st.integers(0, 10**30).map(lambda n: f"{n}ms"),
    st.text("0123456789.", min_size=1, max_size=30).map(lambda t: t + "d"),
)


def _flow(template: str, version: str, within: str) -> str:
    escaped = template.replace("\\", "\\\\").replace('"', '\\"')
    return (
        BASE_FLOW.replace("version: 1", f"version: {version}")
        .replace("within: 10s", f"within: {within}")
        .replace('"late by {{ deviation.late_by }}"', f'"{escaped}"')
    )


def _alias_chain(fanout: int, depth: int) -> str:
    text = "a0: &a0 [" + ",".join(["x"] * fanout) + "]\n"
    for i in range(1, depth + 1):
        text += f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * fanout) + "]\n"
    return text


@st.composite
def hostile_files(draw: st.DrawFn) -> bytes:
    version = draw(st.one_of(st.just("1"), _NUMBERS))  # half the files get past the numbers
    within = draw(st.one_of(st.just("10s"), _DURATIONS))
    text = _flow(draw(_templates), version, within)
    shape = draw(st.sampled_from(["flow", "nest-flow", "nest-block", "aliases", "pad", "bytes"]))
    if shape == "nest-flow":
        n = draw(st.integers(1, 20_000))
        text += "deep: " + draw(st.sampled_from(["[", "{a: ", "[{"])) * n + "\n"
    elif shape == "nest-block":
        n = draw(st.integers(1, 3_000))
        text += "deep:\n" + "".join(" " * i + "- a:\n" for i in range(1, n))
    elif shape == "aliases":
        text = _alias_chain(draw(st.integers(1, 50)), draw(st.integers(1, 12))) + text
    elif shape == "pad":  # sizes from bytes to megabytes
        size = 2 ** draw(st.integers(0, 22))
        text += draw(st.sampled_from(["description: '", "# ", "- "])) + "x" * size + "\n"
    data = text.encode()
    if shape == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    return data


@pytest.fixture(scope="module", autouse=True)
def _report_figures() -> Iterator[None]:
    yield
    if FIGURES["inputs"]:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(
            f"\nhostile flow files: {int(FIGURES['inputs'])} tried, "
            f"{int(FIGURES['exit 0'])} valid, {int(FIGURES['exit 2'])} refused, "
            f"{int(FIGURES['crashes'])} crashes; slowest {FIGURES['slowest s']:.2f}s; "
            f"largest RSS of the test process {rss} MB"
        )
    if FIGURES.get("renders"):
        print(
            f"generated templates rendered: {int(FIGURES['renders'])}, "
            f"slowest {FIGURES['slowest render s']:.3f}s (failures all RenderError)"
        )


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_files())
def test_validate_never_crashes_on_hostile_files(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d, "flow.yaml")
        f.write_bytes(data)
        started = time.perf_counter()
        result = CliRunner().invoke(main, ["validate", str(f)])
        took = time.perf_counter() - started
    FIGURES["inputs"] += 1
    FIGURES["slowest s"] = max(FIGURES["slowest s"], took)
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    FIGURES["crashes"] += crashed
    FIGURES[f"exit {result.exit_code}"] = FIGURES.get(f"exit {result.exit_code}", 0) + 1
    assert not crashed, (result.exception, data[:300])
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output


_CAPTURED = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["x" * 500_000, "{:>99999999}", "%0999999999d"]),
    st.lists(st.integers(0, 9), max_size=5000),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(_templates, _CAPTURED)
def test_templates_render_or_raise_a_render_error(source: str, total: object) -> None:
    from observer.errors import RenderError
    from observer.flows.templates import TemplateContextSpec, compile_template

    tpl, _ = compile_template(source, TemplateContextSpec("key", {"placed": ["value.total"]}))
    if tpl is None:
        return
    data = {
        "key": "k",
        "flow": "f",
        "version": 1,
        "now": "2026-01-01T00:00:00Z",
        "instance": {"started_at": None},
        "steps": {"placed": {"time": "2026-01-01T00:00:00Z", "value": {"total": total}}},
        "deviation": {"kind": "missing", "step": "paid"},
    }
    started = time.perf_counter()
    try:
        tpl.render(data)
    except RenderError as exc:
        assert str(exc).startswith("template '") and "\n" not in str(exc)
    took = time.perf_counter() - started
    FIGURES["renders"] = FIGURES.get("renders", 0) + 1
    FIGURES["slowest render s"] = max(FIGURES.get("slowest render s", 0), took)
