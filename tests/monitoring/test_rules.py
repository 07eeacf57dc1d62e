"""ops/monitoring/ checked with Debian's promtool and amtool: the shipped rules are valid and pass
their unit tests, every metric they use is one the observer exports (or will: guardrails) and has
synthetic series in a test, every alert is tested firing and silent, `observer rules` output is
valid and its burn-rate alerts fire on a fast burn and stay silent on a healthy flow."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from observer.flows.compiler import load_registry
from observer.metrics import Metrics
from observer.slo_rules import render_rules, slo_rule_groups
from tests.monitoring.conftest import MONITORING, REPO, RunPromtool

RULES = MONITORING / "prometheus" / "rules"
RULE_TESTS = MONITORING / "prometheus" / "tests"
DOCS = REPO / "docs" / "monitoring.md"
# Metrics of the guardrails (contract §7), written against the names their author will use.
PLANNED = {"observer_incidents_open", "observer_actions_held"}
METRIC_NAME = re.compile(r"\b(observer_[a-z_]+|up)\b(?!:)")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def exported_names() -> set[str]:
    """Every series name the observer's /metrics can carry (counters with _total, histograms
    with _bucket, _sum, _count)."""
    names: set[str] = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


def alert_rules(path: Path) -> list[dict[str, Any]]:
    return [r for g in load(path)["groups"] for r in g["rules"] if "alert" in r]


def used_metrics(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in METRIC_NAME.findall(e)}


@pytest.mark.parametrize("rule_file", sorted(RULES.glob("*.yml")), ids=lambda p: p.name)
def test_shipped_rules_pass_promtool_check(run_promtool: RunPromtool, rule_file: Path) -> None:
    done = run_promtool("check", "rules", str(rule_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize("test_file", sorted(RULE_TESTS.glob("*.yml")), ids=lambda p: p.name)
def test_shipped_rule_unit_tests_pass(run_promtool: RunPromtool, test_file: Path) -> None:
    done = run_promtool("test", "rules", str(test_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_rule_file_has_its_unit_tests() -> None:
    tested = {
        (RULE_TESTS / f).resolve() for t in RULE_TESTS.glob("*.yml") for f in load(t)["rule_files"]
    }
    assert tested == {p.resolve() for p in RULES.glob("*.yml")}


def test_slo_rules_are_what_observer_rules_generates_from_flows() -> None:
    groups, warnings = slo_rule_groups(load_registry([REPO / "flows"]).newest_flows())
    assert warnings == []
    assert [g["name"] for g in groups] == ["observer-slo-checkout"]
    assert (RULES / "slo.rules.yml").read_text() == render_rules(groups), (
        "regenerate: observer rules flows/ -o ops/monitoring/prometheus/rules/slo.rules.yml"
    )


def test_every_alert_is_tested_firing_and_silent() -> None:
    for rule_file in RULES.glob("*.yml"):
        names = {r["alert"] for r in alert_rules(rule_file)}
        firing: set[str] = set()
        silent: set[str] = set()
        for test_file in RULE_TESTS.glob("*.yml"):
            spec = load(test_file)
            if rule_file.name not in {Path(f).name for f in spec["rule_files"]}:
                continue
            for case in spec["tests"]:
                for check in case.get("alert_rule_test", []):
                    (firing if check["exp_alerts"] else silent).add(check["alertname"])
        assert names <= firing, f"{rule_file.name}: never tested firing: {names - firing}"
        assert names <= silent, f"{rule_file.name}: never tested silent: {names - silent}"


def test_every_metric_the_rules_use_is_exported_and_has_synthetic_series() -> None:
    exported = exported_names() | PLANNED | {"up"}
    rules = alert_rules(RULES / "observer.rules.yml")
    used = used_metrics([r["expr"] for r in rules])
    assert used - exported == set(), "the rules use metrics the observer does not export"
    spec = load(RULE_TESTS / "observer.test.yml")
    synthetic = {s["series"].split("{")[0] for case in spec["tests"] for s in case["input_series"]}
    assert used <= synthetic, f"no synthetic series for {used - synthetic}"
    assert used >= PLANNED  # incidents and held actions are covered


def test_the_slo_rules_read_only_the_slo_counter() -> None:
    exprs = [r["expr"] for g in load(RULES / "slo.rules.yml")["groups"] for r in g["rules"]]
    assert used_metrics(exprs) == {"observer_slo_events_total"}
    assert "observer_slo_events_total" in exported_names()


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return out


def test_every_alert_links_to_its_runbook_in_docs_monitoring() -> None:
    anchors = _anchors(DOCS.read_text())
    for rule_file in RULES.glob("*.yml"):
        for rule in alert_rules(rule_file):
            url = rule["annotations"]["runbook_url"]
            page, _, anchor = url.partition("#")
            assert page == "docs/monitoring.md", url
            assert anchor in anchors, f"{rule['alert']}: docs/monitoring.md has no #{anchor}"


def test_compose_prometheus_config_passes_promtool_check_config(
    run_promtool: RunPromtool, tmp_path: Path
) -> None:
    config = load(MONITORING / "prometheus" / "prometheus.yml")
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]  # where compose mounts them
    config["rule_files"] = [str(RULES / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = run_promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") >= 3  # the config and both rule files


def test_alertmanager_config_passes_amtool(promtool: str) -> None:
    amtool = shutil.which("amtool")
    assert amtool is not None, "prometheus-alertmanager ships amtool"
    done = subprocess.run(
        [amtool, "check-config", str(MONITORING / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- `observer rules` on a flow of its own --------------------------------------------------------

PAYMENTS = """
flow: payments
version: 1
sources:
  pay: {topic: pay, type: value.type, key: value.id}
steps:
  - step: requested
    on: pay.Requested
  - step: settled
    on: pay.Settled
    within: 1h
slo: {objective: 99.9%, within: 5m, window: 7d}
"""

BURN_TESTS = """
rule_files: [slo.rules.yml]
evaluation_interval: 1m
tests:
  - name: healthy, 0.05 % bad (half the budget) fires nothing
    interval: 1m
    input_series:
      - {series: 'observer_slo_events_total{flow="payments",result="good"}', values: '0+1999x240'}
      - {series: 'observer_slo_events_total{flow="payments",result="bad"}', values: '0+1x240'}
    alert_rule_test:
      - {eval_time: 4h, alertname: ObserverSLOBudgetBurnFast, exp_alerts: []}
      - {eval_time: 4h, alertname: ObserverSLOBudgetBurnSlow, exp_alerts: []}
    promql_expr_test:
      - expr: observer_slo:burn_rate:rate1h
        eval_time: 4h
        exp_samples: [{labels: 'observer_slo:burn_rate:rate1h{flow="payments"}', value: 0.5}]
  - name: fast burn, 2.5 % bad (25x the budget) pages
    interval: 1m
    input_series:
      - {series: 'observer_slo_events_total{flow="payments",result="good"}', values: '0+975x30'}
      - {series: 'observer_slo_events_total{flow="payments",result="bad"}', values: '0+25x30'}
    alert_rule_test:
      - eval_time: 10m
        alertname: ObserverSLOBudgetBurnFast
        exp_alerts:
          - exp_labels:
              {severity: page, flow: payments, slo_objective: 99.9%, slo_within: 5m, slo_window: 7d}
            exp_annotations:
              summary: Flow payments spends its SLO error budget 25.0x as fast as it may
              description: >-
                SLO: 99.9% of payments instances complete within 5m of their start, over 7d.
                Fires at 14.4x over 1h and 5m, or 6x over 6h and 30m.
              runbook_url: docs/monitoring.md#slo-alerts
    promql_expr_test:
      - expr: observer_slo:error_budget_remaining:ratio
        eval_time: 10m
        exp_samples:
          - {labels: 'observer_slo:error_budget_remaining:ratio{flow="payments"}', value: -24}
"""


def test_generated_rules_pass_promtool_and_a_fast_burn_pages_a_healthy_flow_does_not(
    run_promtool: RunPromtool, tmp_path: Path
) -> None:
    flow = tmp_path / "payments.yaml"
    flow.write_text(PAYMENTS)
    rules = tmp_path / "slo.rules.yml"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("observer")), "rules", str(flow), "-o", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    checked = run_promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 20 rules found" in checked.stdout
    (tmp_path / "burn.test.yml").write_text(textwrap.dedent(BURN_TESTS))
    tested = run_promtool("test", "rules", "burn.test.yml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
