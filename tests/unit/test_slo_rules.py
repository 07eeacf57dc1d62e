"""`observer rules`: the rule groups generated from the flows' `slo:` (pure checks; promtool
checks and unit-tests the output in tests/monitoring/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from observer.cli import main
from observer.slo_rules import SLI_WINDOWS, render_rules, slo_rule_groups
from tests.unit.replay_harness import BASE_FLOW
from tests.unit.test_slo import registry_of

WITH_SLO = BASE_FLOW.replace("buffer: 30s", "slo: {objective: 99.5%, within: 30m}\nbuffer: 30s")


def rules_by_name(group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r.get("record") or r["alert"]: r for r in group["rules"]}


def test_one_group_per_flow_with_an_slo_in_name_order() -> None:
    other = WITH_SLO.replace("flow: shop", "flow: returns")
    plain = BASE_FLOW.replace("flow: shop", "flow: plain")
    flows = [
        registry_of(t).newest(n)
        for t, n in ((WITH_SLO, "shop"), (plain, "plain"), (other, "returns"))
    ]
    groups, warnings = slo_rule_groups(flows)
    assert [g["name"] for g in groups] == ["observer-slo-returns", "observer-slo-shop"]
    assert warnings == []


def test_recording_rules_cover_the_workbook_windows_and_the_budget() -> None:
    (group,), _ = slo_rule_groups([registry_of(WITH_SLO).newest("shop")])
    rules = rules_by_name(group)
    assert rules["observer_slo:objective:ratio"]["expr"] == "0.995"
    assert rules["observer_slo:error_budget:ratio"]["expr"] == "0.005"
    assert rules["observer_slo:error_budget:ratio"]["labels"] == {"flow": "shop"}
    for window in SLI_WINDOWS:
        ratio = rules[f"observer_slo:error_ratio:rate{window}"]["expr"]
        assert f'observer_slo_events_total{{flow="shop",result="bad"}}[{window}]' in ratio
        assert f'observer_slo_events_total{{flow="shop"}}[{window}]' in ratio
        assert f"observer_slo:burn_rate:rate{window}" in rules
    period = rules["observer_slo:error_ratio:period"]["expr"]
    assert "[28d]" in period  # the default window
    assert "observer_slo:error_budget_remaining:ratio" in rules


def test_burn_rate_alerts_are_the_workbooks_pairs() -> None:
    (group,), _ = slo_rule_groups([registry_of(WITH_SLO).newest("shop")])
    rules = rules_by_name(group)
    fast, slow = rules["ObserverSLOBudgetBurnFast"], rules["ObserverSLOBudgetBurnSlow"]
    assert fast["labels"]["severity"] == "page" and slow["labels"]["severity"] == "ticket"
    assert fast["labels"]["slo_objective"] == "99.5%"
    for expr, pairs in (
        (fast["expr"], (("1h", "5m", "14.4"), ("6h", "30m", "6"))),
        (slow["expr"], (("1d", "2h", "3"), ("3d", "6h", "1"))),
    ):
        for long, short, factor in pairs:
            assert f'observer_slo:burn_rate:rate{long}{{flow="shop"}} > {factor}\n' in expr
            assert f'and observer_slo:burn_rate:rate{short}{{flow="shop"}} > {factor})' in expr
    # the alerts come after every recording rule they read (rules of a group run in order)
    names = [r.get("record") or r["alert"] for r in group["rules"]]
    assert names[-2:] == ["ObserverSLOBudgetBurnFast", "ObserverSLOBudgetBurnSlow"]


def test_an_objective_too_low_for_the_fast_burn_is_warned_about() -> None:
    low = WITH_SLO.replace("99.5%", "90%")
    groups, warnings = slo_rule_groups([registry_of(low).newest("shop")])
    assert len(groups) == 1
    (warning,) = warnings  # 14.4x a 10% budget is over 100% bad; 6x (60%) can still happen
    assert "page alert's 14.4x burn over 1h cannot fire" in warning
    assert "more than 144% of instances bad" in warning


def test_rendered_text_is_yaml_with_a_header_and_round_trips() -> None:
    groups, _ = slo_rule_groups([registry_of(WITH_SLO).newest("shop")])
    text = render_rules(groups)
    assert text.startswith("# Prometheus rules for the flows' SLOs")
    assert yaml.safe_load(text) == {"groups": json.loads(json.dumps(groups))}
    assert "&id" not in text  # no YAML anchors: each rule reads on its own


def test_cli_prints_or_writes_the_rules_and_rejects_invalid_flows(tmp_path: Path) -> None:
    flow = tmp_path / "shop.yaml"
    flow.write_text(WITH_SLO)
    runner = CliRunner()
    printed = runner.invoke(main, ["rules", str(flow)])
    assert printed.exit_code == 0, printed.output
    assert yaml.safe_load(printed.stdout)["groups"][0]["name"] == "observer-slo-shop"
    out = tmp_path / "slo.rules.yml"
    written = runner.invoke(main, ["rules", str(flow), "--output", str(out)])
    assert written.exit_code == 0
    assert out.read_text() == printed.stdout
    assert "wrote 1 rule group(s)" in written.stderr
    flow.write_text(WITH_SLO.replace("99.5%", "99.5"))
    bad = runner.invoke(main, ["rules", str(flow)])
    assert bad.exit_code == 2
    assert f"{flow}:" in bad.stderr and "is not a percentage" in bad.stderr


def test_cli_says_when_no_flow_has_an_slo(tmp_path: Path) -> None:
    flow = tmp_path / "shop.yaml"
    flow.write_text(BASE_FLOW)
    done = CliRunner().invoke(main, ["rules", str(flow)])
    assert done.exit_code == 0
    assert yaml.safe_load(done.stdout) == {"groups": []}
    assert "no flow declares an slo:" in done.stderr
