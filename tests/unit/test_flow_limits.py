"""Issue 12: nothing a flow author writes can exhaust the observer's memory or CPU, or hold a
number it cannot store. Each attack is refused by `observer validate` with file:line (exit 2,
quickly), and a template that fails on the data raises the typed RenderError, never anything
else and never after unbounded work."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from observer.errors import FlowError, RenderError, TemplateLimitError
from observer.flows.compiler import load_registry
from observer.flows.templates import TemplateContextSpec, compile_template
from observer.limits import (
    MAX_FLOW_FILE_BYTES,
    MAX_LOOP_ITERATIONS,
    MAX_RENDERED_SIZE,
    MAX_TEMPLATE_CHARS,
    MAX_VERSION,
)
from observer.timefmt import parse_duration

FLOW = """\
flow: shop
version: 1
sources:
  orders: {topic: orders, type: value.type, key: value.id}
steps:
  - step: placed
    on: orders.Placed
    capture: [value.total, value.blob, value.items]
  - step: paid
    on: orders.Paid
    within: 10s
    if_missing: [notify]
actions:
  notify:
    alert: {severity: info, summary: SUMMARY}
"""
SUMMARY_LINE = 15


def flow_with(summary: str) -> str:
    return FLOW.replace("SUMMARY", summary)


def billion_laughs(levels: int = 9) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for prev, name in zip("abcdefgh", "bcdefghi", strict=False):
        if name > "abcdefghi"[levels - 1]:
            break
        text += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    return text


# file name -> (text, line the problem is reported at, words of the message)
ATTACKS: dict[str, tuple[str | bytes, int, str]] = {
    "pow_huge": (flow_with('"{{ 7 ** (10**8) }}"'), SUMMARY_LINE, "beyond 64 bits"),
    "pow_mid": (flow_with('"{{ 7 ** 99999 }}"'), SUMMARY_LINE, "beyond 64 bits"),
    "str_mul": (flow_with("\"{{ 'a' * 10**8 }}\""), SUMMARY_LINE, "larger than"),
    "nested_loops": (
        flow_with(
            '"{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}"'
        ),
        SUMMARY_LINE,
        "loops run more than",
    ),
    "big_range": (
        flow_with('"{% for i in range(100000) %}x{% endfor %}"'),
        SUMMARY_LINE,
        "more than 10000 numbers",
    ),
    "doubling": (
        flow_with(
            "\"{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
            '{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"'
        ),
        SUMMARY_LINE,
        "whatever the data",
    ),
    "ljust": (flow_with('"{{ key.ljust(10**9) }}"'), SUMMARY_LINE, "width"),
    "printf": (flow_with("\"{{ '%0100000000d' % 1 }}\""), SUMMARY_LINE, "format width"),
    "to_bytes": (flow_with("\"{{ (1).to_bytes(10**8, 'big') }}\""), SUMMARY_LINE, "to_bytes"),
    "macro": (
        flow_with('"{% macro m() %}{{ m() }}{{ m() }}{% endmacro %}{{ m() }}"'),
        SUMMARY_LINE,
        "macro",
    ),
    "recursive_loop": (
        flow_with('"{% for x in [1] recursive %}{{ loop([1, 2]) }}{% endfor %}"'),
        SUMMARY_LINE,
        "recursive",
    ),
    "parens": (flow_with('"{{ ' + "(" * 300 + "1" + ")" * 300 + ' }}"'), SUMMARY_LINE, "deep"),
    "long_template": (
        flow_with('"{{ key }}' + "x" * MAX_TEMPLATE_CHARS + '"'),
        SUMMARY_LINE,
        "longer than",
    ),
    "alias_bomb": (billion_laughs(), 6, "alias"),
    "flow_nesting": ("flow: " + "[" * 5000 + "]" * 5000 + "\n", 1, "nest more than"),
    "block_nesting": (
        "deep:\n" + "".join(" " * i + "a:\n" for i in range(1, 200)) + " " * 200 + "b: 1\n",
        64,
        "nest more than",
    ),
    "version_huge": (FLOW.replace("version: 1", "version: " + "1" + "0" * 32), 2, "64-bit"),
    "version_big": (FLOW.replace("version: 1", "version: 10000000000"), 2, str(MAX_VERSION)),
    "version_hex": (FLOW.replace("version: 1", "version: 0x" + "f" * 5000), 2, "64-bit"),
    "within_huge": (
        FLOW.replace("within: 10s", "within: 99999999999999999999999d"),
        11,
        "longest duration",
    ),
    "within_digits": (FLOW.replace("within: 10s", "within: " + "9" * 5000 + "s"), 11, "longest"),
    "too_big": ("# " + "x" * MAX_FLOW_FILE_BYTES + "\n" + FLOW, 0, "larger than"),
    "not_utf8": (FLOW.encode().replace(b"SUMMARY", b'"caf\xe9"'), SUMMARY_LINE, "not UTF-8"),
}


def test_validate_refuses_every_attack_quickly_with_file_and_line(tmp_path: Path) -> None:
    files = {}
    for name, (text, _, _) in ATTACKS.items():
        f = tmp_path / f"{name}.yaml"
        if isinstance(text, bytes):
            f.write_bytes(text)
        else:
            f.write_text(text)
        files[name] = f
    # A file the loader refuses stops the others from being compiled: validate again the files
    # whose problems were not reported yet (loader problems first, then template problems).
    started = time.perf_counter()
    stderr, remaining, rounds = "", dict(files), 0
    while remaining and rounds < 3:
        rounds += 1
        res = subprocess.run(
            [sys.executable, "-m", "observer.cli", "validate", *map(str, remaining.values())],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr
        stderr += res.stderr
        remaining = {n: f for n, f in remaining.items() if f"{f}:" not in res.stderr}
    took = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    print(f"validate of {len(files)} hostile files ({rounds} runs): {took:.2f}s, max RSS {rss} MB")
    for name, (_, line, words) in ATTACKS.items():
        where = f"{files[name]}:{line}: " if line else f"{files[name]}: "
        mine = [x for x in stderr.splitlines() if x.startswith(where)]
        assert mine, (name, where, stderr)
        assert any(words in x for x in mine), (name, mine)


# -- rendering: every failure is a short, typed RenderError ----------------------------------------

CTX = TemplateContextSpec("order_id", {"placed": ["value.total", "value.blob", "value.items"]})


def context(**captured: Any) -> dict[str, Any]:
    value = {"total": None, "blob": None, "items": None, **captured}
    return {
        "key": "o-1",
        "order_id": "o-1",
        "flow": "shop",
        "version": 1,
        "now": "2026-01-01T00:00:00Z",
        "instance": {"started_at": "2026-01-01T00:00:00Z"},
        "steps": {"placed": {"time": "2026-01-01T00:00:00Z", "value": value}},
        "deviation": {
            "kind": "missing",
            "step": "paid",
            "deadline": None,
            "observed_at": None,
            "late_by": None,
            "late_by_ms": None,
        },
    }


def render(source: str, **captured: Any) -> Any:
    tpl, problems = compile_template(source, CTX)
    assert tpl is not None, problems
    return tpl.render(context(**captured))


BLOB = "x" * MAX_RENDERED_SIZE


@pytest.mark.parametrize(
    ("source", "captured", "error", "words"),
    [
        ("{{ steps.placed.value.total * 100 }}", {}, RenderError, "TypeError"),
        ("{{ none * 100 }}", {}, RenderError, "TypeError"),
        ("{{ steps.placed.value.total | length }}", {}, RenderError, "len()"),
        ("{{ steps.placed.value.total + 1 }} EUR", {}, RenderError, "TypeError"),
        ("{{ 1 // 0 }}", {}, RenderError, "ZeroDivisionError"),
        ("{{ 10.0 ** 400 }}", {}, RenderError, "OverflowError"),
        ("{{ steps.placed.value.total.nope.x + 1 }}", {}, RenderError, "UndefinedError"),
        ("{{ steps.placed.value.blob * 100 }}", {"blob": BLOB}, TemplateLimitError, "larger"),
        ("{{ steps.placed.value.blob ~ 'x' }}", {"blob": BLOB}, TemplateLimitError, "'~'"),
        ("x{{ steps.placed.value.blob }}", {"blob": BLOB}, TemplateLimitError, "renders more"),
        ("{{ steps.placed.value.total * 10 }}", {"total": 2**62}, TemplateLimitError, "64 bits"),
        ("{{ 2 ** steps.placed.value.total }}", {"total": 10**8}, TemplateLimitError, "64 bits"),
        (
            "{% for i in range(steps.placed.value.total) %}"
            "{% for j in range(steps.placed.value.total) %}x{% endfor %}{% endfor %}",
            {"total": 9999},
            TemplateLimitError,
            "loops run more than",
        ),
        (
            "{% for a in steps.placed.value.items %}{% for b in steps.placed.value.items %}"
            "{% endfor %}{% endfor %}",
            {"items": list(range(5000))},
            TemplateLimitError,
            "loops run more than",
        ),
        (
            "{{ steps.placed.value.items | join(steps.placed.value.blob) }}",
            {"items": list(range(100)), "blob": "y" * 100_000},
            TemplateLimitError,
            "larger than",
        ),
        (
            "{{ steps.placed.value.blob.replace('x', 'xx') }}",
            {"blob": "x" * 600_000},
            TemplateLimitError,
            "replacing",
        ),
        (
            "{{ steps.placed.value.blob.center(steps.placed.value.total) }}",
            {"blob": "x", "total": 10**9},
            TemplateLimitError,
            "width",
        ),
        (
            "{{ steps.placed.value.blob.format(1) }}",
            {"blob": "{:>100000000}"},
            TemplateLimitError,
            "format width",
        ),
        (
            "{{ steps.placed.value.blob % 1 }}",
            {"blob": "%0100000000d"},
            TemplateLimitError,
            "format width",
        ),
        (
            "{{ key.upper().lower() }}",
            {},
            None,
            "",
        ),
        ("{{ range | list }}", {}, RenderError, ""),
        (
            "{% set ns = namespace(l=[1]) %}{% for i in range(steps.placed.value.total) %}"
            "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}",
            {"total": 60},
            TemplateLimitError,
            "larger than",
        ),
        (
            "{% set ns = namespace(a=[1], b=[1]) %}{% for i in range(steps.placed.value.total) %}"
            "{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}"
            "{{ ns.a == ns.b }}",
            {"total": 60},
            TemplateLimitError,
            "larger than",
        ),
        (
            "{% set ns = namespace(l=1) %}{% for i in range(steps.placed.value.total) %}"
            "{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}",
            {"total": 5000},
            RenderError,
            "",
        ),
    ],
)
def test_rendering_raises_a_short_typed_error_within_a_bound(
    source: str, captured: dict[str, Any], error: type[Exception] | None, words: str
) -> None:
    started = time.perf_counter()
    if error is None:
        assert render(source, **captured) is not None
        return
    with pytest.raises(error) as info:
        render(source, **captured)
    took = time.perf_counter() - started
    message = str(info.value)
    print(f"{took * 1000:7.1f} ms  {message}")
    assert message.startswith("template '") and words in message
    assert len(message) < 400 and "\n" not in message


def test_a_template_fails_only_where_it_would_and_renders_what_it_did() -> None:
    assert render("{{ steps.placed.value.total * 2 }}", total=21) == 42
    assert render("{{ steps.placed.value.items | map('string') | join(',') }}", items=[1, 2]) == (
        "1,2"
    )
    assert render("{{ steps.placed.value.items | map('upper') }}", items=["a", "b"]) == ["A", "B"]
    assert render("{{ (key, 1) }}") == ["o-1", 1]
    assert render("{{ {1: key} }}") == {"1": "o-1"}
    assert render("{{ '%.2f' | format(steps.placed.value.total) }}", total=3.14159) == "3.14"
    assert render("{{ '{:>5}'.format(key) }}") == "  o-1"
    assert render("{% for i in range(3) %}{{ loop.index }}{% endfor %}") == "123"
    assert render("{{ steps.placed.value.blob }}", blob=BLOB) == BLOB  # at the limit is fine
    items = [{"sku": str(i)} for i in range(2000)]
    assert render("{{ steps.placed.value.items }}", items=items) is not None  # fast path
    assert len(render("{{ steps.placed.value.items | list }}", items=items)) == 2000
    assert render("{{ 2 ** 62 }}") == 2**62


def test_captured_data_is_never_changed_by_a_template() -> None:
    items = [1, 2]
    tpl, problems = compile_template("{{ steps.placed.value.items.append(3) }}", CTX)
    assert tpl is None and "append" in problems[0]
    assert render("{{ steps.placed.value.items.__class__ }}", items=items) is None
    assert render("{{ steps.placed.value.items | reverse | list }}", items=items) == [2, 1]
    assert items == [1, 2]


def test_limits_hold_for_the_work_of_one_rendering_not_a_process() -> None:
    source = "{% for i in range(9000) %}{{ i }}{% endfor %}"
    for _ in range(3):  # each rendering gets its own budget
        assert render(source).startswith("0123")
    assert MAX_LOOP_ITERATIONS >= 9000


# -- numbers and durations the observer cannot store -----------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["36501d", "P36501D", "876025h", f"{36_500 * 86_400_001}ms", "9" * 400 + "ms", "1e400s"],
)
def test_durations_beyond_100_years_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"longest duration|not a duration"):
        parse_duration(text)


def test_durations_at_the_limit_and_fractions_are_exact() -> None:
    assert parse_duration("36500d") == 36_500 * 86_400_000
    assert parse_duration("1.5h") == 5_400_000
    assert parse_duration("0.0015s") == 2  # 1.5 ms rounds half to even
    assert parse_duration("PT0.0025S") == 2


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("retain: 1h", "retain: 99999999d", "longest duration"),
        ("expire: 1d", "expire: P99999999D", "longest duration"),
        ("buffer: 30s", "buffer: 100000000000000000000ms", "longest duration"),
        ("warn: 80%", "warn: 99999999999d", "longest duration"),
        ("version: 1", f"version: {MAX_VERSION + 1}", "less than or equal"),
        ("version: 1", "version: -9223372036854775809", "64-bit"),
    ],
)
def test_numbers_beyond_what_is_stored_are_validation_errors(
    tmp_path: Path, old: str, new: str, words: str
) -> None:
    from tests.unit.replay_harness import BASE_FLOW

    assert old in BASE_FLOW
    text = BASE_FLOW.replace(old, new)
    f = tmp_path / "flow.yaml"
    f.write_text(text)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if new in x)
    with pytest.raises(FlowError) as info:
        load_registry([f])
    assert any(p.line == line and words in p.message for p in info.value.problems), str(info.value)


def test_aliases_within_the_budget_are_expanded(tmp_path: Path) -> None:
    text = FLOW.replace("SUMMARY", "x").replace(
        "if_missing: [notify]", "if_missing: &handler [notify]\n    if_late: *handler"
    )
    f = tmp_path / "flow.yaml"
    f.write_text(text)
    (flow,) = load_registry([f])
    assert [a.name for a in flow.steps[1].if_late.actions] == ["notify"]
