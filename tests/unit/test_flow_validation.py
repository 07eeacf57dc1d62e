"""Every validation error the contract names is reported with file, line and plain words."""

from __future__ import annotations

from pathlib import Path

import pytest

from observer.errors import FlowError
from observer.flows.compiler import load_registry
from tests.unit.replay_harness import BASE_FLOW


def problems(tmp_path: Path, text: str, name: str = "flow.yaml") -> list[str]:
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(FlowError) as exc:
        load_registry([f])
    return [str(p) for p in exc.value.problems]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_base_flow_is_valid(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(BASE_FLOW)
    reg = load_registry([tmp_path / "f.yaml"])
    assert [f.name for f in reg] == ["shop"]


@pytest.mark.parametrize(
    ("old", "new", "needle", "message"),
    [
        (
            "on: pay.Paid",
            "on: payment.Paid",
            "payment.Paid",
            "step 'paid' refers to unknown source 'payment' (known: orders, pay, ship)",
        ),
        ("within: 20s", "within: 20 parsecs", "20 parsecs", "is not a duration"),
        ("warn: 80%", "warn: 12s", "warn: 12s", "warn (12s) must be shorter than within (10s)"),
        (
            "if_missing: [cancel]",
            "if_missing: [cancle]",
            "if_missing",
            "names unknown action 'cancle'",
        ),
        ("then: comp", "then: compensate", "then: compensate", "unknown path 'compensate'"),
        (
            "{{ steps.placed.value.total }}",
            "{{ steps.placed.value.tax }}",
            "value.tax",
            "names data step 'placed' does not capture",
        ),
        (
            '{{ key }}", value: {type: Refund',
            '{{ order }}", value: {type: Refund',
            "{{ order }}",
            "names 'order', which is not in the template context",
        ),
        (
            "  - step: shipped\n    on: ship.Shipped\n",
            "  - step: shipped\n    on: ship.Shipped\n    after: nowhere\n",
            "after: nowhere",
            "'after' names unknown step 'nowhere'",
        ),
        (
            "      - step: refunded",
            "      - step: paid",
            "      - step: paid",
            "step name 'paid' is used twice",
        ),
        ("flow: shop", "flow: Shop!", "flow: Shop!", "flow name 'Shop!' must match"),
        ("within: 5s", "within: 5s\n        withn: 3s", "withn", "unknown key 'withn'"),
        (
            "  - on: pay.Failed",
            "  - on: pay.Paid",
            "- on: pay.Paid",
            "pay.Paid is also a step's event",
        ),
    ],
)
def test_problem_is_named_with_its_line(
    tmp_path: Path, old: str, new: str, needle: str, message: str
) -> None:
    assert_named_at(tmp_path, BASE_FLOW, old, new, needle, message)


def assert_named_at(
    tmp_path: Path, flow: str, old: str, new: str, needle: str, message: str
) -> None:
    """`flow` with `old` replaced by `new` is refused with `message` at the line of `needle`."""
    assert old in flow
    text = flow.replace(old, new, 1)
    got = problems(tmp_path, text)
    expected_line = line_of(text, needle)
    assert any(
        message in p and p.startswith(f"{tmp_path / 'flow.yaml'}:{expected_line}:") for p in got
    ), got


def test_anchor_cycle_is_reported(tmp_path: Path) -> None:
    text = BASE_FLOW.replace(
        "    within: 10s\n    warn: 80%", "    after: shipped\n    within: 10s\n    warn: 80%"
    ).replace("    on: ship.Shipped\n", "    on: ship.Shipped\n    after: paid\n")
    got = problems(tmp_path, text)
    assert any("anchors form a cycle" in p for p in got), got


def test_all_problems_of_a_file_are_reported_at_once(tmp_path: Path) -> None:
    text = BASE_FLOW.replace("on: pay.Paid", "on: payment.Paid").replace(
        "if_missing: [cancel]", "if_missing: [nope]"
    )
    got = problems(tmp_path, text)
    assert len(got) >= 2


def test_same_flow_and_version_in_two_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BASE_FLOW)
    (tmp_path / "b.yaml").write_text(BASE_FLOW.replace("within: 20s", "within: 25s"))
    with pytest.raises(FlowError) as exc:
        load_registry([tmp_path])
    (p,) = exc.value.problems
    assert "version 1 is already defined in" in p.message and p.line == 3


def test_several_flows_in_one_file_as_documents(tmp_path: Path) -> None:
    (tmp_path / "multi.yaml").write_text(
        BASE_FLOW + "---\n" + BASE_FLOW.replace("flow: shop", "flow: other")
    )
    assert [f.name for f in load_registry([tmp_path / "multi.yaml"])] == ["other", "shop"]


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    got = problems(tmp_path, "flow: x\nversion: 1\nsteps: [\n  - a\n")
    assert got[0].startswith(f"{tmp_path / 'flow.yaml'}:") and "invalid YAML" in got[0]


@pytest.mark.parametrize("text", ["", "- 1\n- 2\n", "just a string\n"])
def test_documents_that_are_not_flows(tmp_path: Path, text: str) -> None:
    assert problems(tmp_path, text)


def test_handler_never_firing_is_an_error(tmp_path: Path) -> None:
    text = BASE_FLOW.replace("    within: 20s\n", "    if_missing: [cancel]\n")
    got = problems(tmp_path, text)
    assert any("if_missing never fires without 'within'" in p for p in got), got


# -- aliases (correlation by a second id) -----------------------------------------------------------


def _alias_flow() -> str:
    from tests.unit.test_engine_aliases import FLOW

    return FLOW


def test_the_alias_example_is_valid(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(_alias_flow())
    (flow,) = load_registry([tmp_path / "f.yaml"])
    assert [a.name for a in flow.aliases] == ["tracking"]
    assert flow.sources["carrier"].via == "tracking"
    assert flow.alias_from == {("shipping", "TransportBooked"): (0,)}


@pytest.mark.parametrize(
    ("old", "new", "needle", "message"),
    [
        (
            "    via: tracking",
            "    via: parcel",
            "via: parcel",
            "source 'carrier': via names unknown alias 'parcel' (aliases: tracking)",
        ),
        (
            "from: shipping.TransportBooked",
            "from: carrier.Booked",
            "from: carrier.Booked",
            "alias 'tracking': from names source 'carrier', which reads values of alias "
            "'tracking' (via)",
        ),
        (
            "from: shipping.TransportBooked",
            "from: [shipping.TransportBooked, shiping.X]",
            "from: [shipping",
            "alias 'tracking': from refers to unknown source 'shiping'",
        ),
        (
            "    on: orders.OrderPlaced",
            "    on: [orders.OrderPlaced, carrier.Created]",
            "carrier.Created",
            "a via source cannot start an instance",
        ),
        # (a name is reported at the mapping that holds it, like path and action names)
        ("  tracking:\n", "  Tracking:\n", "aliases:", "alias name 'Tracking' must match"),
        ("value: value.tracking_no", "value: tracking_no", "value: tracking_no", "not a selector"),
        (
            'key: "{{ aliases.tracking }}"',
            'key: "{{ aliases.parcel }}"',
            "    publish:",
            "'aliases.parcel' names no alias of this flow (aliases: tracking)",
        ),
        ("key: order_id", "key: aliases", "key: aliases", "key name 'aliases' collides"),
    ],
)
def test_alias_problems_are_named_with_their_line(
    tmp_path: Path, old: str, new: str, needle: str, message: str
) -> None:
    assert_named_at(tmp_path, _alias_flow(), old, new, needle, message)


def test_aliases_in_templates_and_the_conflict_handler_need_aliases(tmp_path: Path) -> None:
    text = BASE_FLOW.replace(
        'value: {type: Refund, id: "{{ key }}"}', 'value: {type: Refund, id: "{{ aliases.x }}"}'
    ).replace("buffer: 30s", "buffer: 30s\nif_alias_conflict: [refund]")
    got = problems(tmp_path, text)
    assert any(
        p.startswith(f"{tmp_path / 'flow.yaml'}:{line_of(text, 'if_alias_conflict')}:")
        and "if_alias_conflict never fires: the flow has no aliases" in p
        for p in got
    ), got
    assert any("names 'aliases', which is not in the template context" in p for p in got), got
