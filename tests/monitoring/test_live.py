"""Real Prometheus and Alertmanager (Debian's, started by ops/monitoring/run) scraping a live
`observer run`: deviations and an SLO's bad instances driven through Kafka reach Alertmanager's
API as alerts, and every PromQL query of the Grafana dashboard runs on that Prometheus.

One observer, one Prometheus and one Alertmanager for the module. The shipped rules are loaded
with their `for:` set to 0s (the expressions are the shipped ones); the SLO rules are those
`observer rules` generates for the test's flow, unchanged. Prometheus scrapes and evaluates every
second. Ports: OBSERVER_PROMETHEUS_PORT / OBSERVER_ALERTMANAGER_PORT (default 9090 / 9094).
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.e2e.conftest import ObserverProcess
from tests.integration.conftest import Stack, stack
from tests.integration.kafka_helpers import produce, wait_for_topics
from tests.monitoring.conftest import MONITORING, RUN

__all__ = ["stack"]  # the fixture, re-used

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FLOW = """
flow: monitored
version: 1
sources:
  orders: {topic: TOPIC, type: value.type, key: value.id}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: orders.Paid
    within: 1s
slo: {objective: 99.5%, within: 2s, window: 1d}
"""
DASHBOARD = MONITORING / "grafana" / "dashboards" / "observer.json"
# Panels' queries that may have no series while nothing fails (no failure is driven here).
MAY_BE_EMPTY = {("Errors /s", "A"), ("Errors /s", "B")}
BOUND_S = 60.0


@dataclass(frozen=True)
class Monitored:
    """The live setup: where Prometheus, Alertmanager and the observer are; how to send."""

    prometheus: str
    alertmanager: str
    observer: ObserverProcess
    send: Callable[[list[tuple[str, bytes]]], None]


def _wait(what: str, check: Callable[[], Any], bound_s: float = BOUND_S) -> Any:
    """Polls `check` until it returns something truthy; fails after `bound_s` seconds."""
    deadline = time.monotonic() + bound_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"waited {bound_s}s for {what}")
        time.sleep(0.25)


def _query(prometheus: str, expr: str) -> dict[str, Any]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body: dict[str, Any] = response.json()
    return body


def _series(prometheus: str, expr: str) -> list[dict[str, Any]]:
    body = _query(prometheus, expr)
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _rules_for_the_test(tmp: Path, flow_file: Path) -> list[Path]:
    """The shipped on-call rules with `for: 0s`, and the flow's generated SLO rules."""
    shipped = yaml.safe_load(
        (MONITORING / "prometheus" / "rules" / "observer.rules.yml").read_text()
    )
    for group in shipped["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    quick = tmp / "observer.rules.yml"
    quick.write_text(yaml.safe_dump(shipped))
    slo = tmp / "slo.rules.yml"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("observer")), "rules", str(flow_file), "-o", str(slo)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [quick, slo]


def _ops_monitoring(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [str(RUN), *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"ops/monitoring/run {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


@pytest.fixture(scope="module")
def monitored(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    tmp = tmp_path_factory.mktemp("monitoring")
    prefix = f"mon{os.getpid()}_{secrets.token_hex(3)}"
    topic = f"{prefix}-orders"
    out_topics = [f"{prefix}-{t}" for t in ("alerts", "outcomes", "dlq")]
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=1, replication_factor=1) for t in [topic, *out_topics]]
    ).values():
        future.result(30)
    wait_for_topics(admin, [topic, *out_topics], 1, timeout=30)
    flow_file = tmp / "monitored.yaml"
    flow_file.write_text(FLOW.replace("TOPIC", topic))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_")}
    env.update(
        OBSERVER_BOOTSTRAP_SERVERS=stack.bootstrap_servers,
        OBSERVER_REDIS_URL=stack.redis_url,
        OBSERVER_KEY_PREFIX=prefix,
        OBSERVER_GROUP_ID=f"{prefix}-observer",
        OBSERVER_ALERTS_TOPIC=out_topics[0],
        OBSERVER_OUTCOMES_TOPIC=out_topics[1],
        OBSERVER_DLQ_TOPIC=out_topics[2],
        OBSERVER_HTTP_HOST="127.0.0.1",
        OBSERVER_ROUTING="direct",
        OBSERVER_SHARDS="2",
        OBSERVER_IDLE_GRACE_MS="200",
        OBSERVER_COMMIT_DELAY_MS="200",
    )
    observer = ObserverProcess("observer", flow_file, env)
    mon_env = {
        **os.environ,
        "OBSERVER_MONITORING_DIR": str(tmp / "state"),
        "OBSERVER_PROMETHEUS_PORT": os.environ.get("OBSERVER_PROMETHEUS_PORT", "9090"),
        "OBSERVER_ALERTMANAGER_PORT": os.environ.get("OBSERVER_ALERTMANAGER_PORT", "9094"),
        "OBSERVER_PROMETHEUS_INTERVAL": "1s",
        "OBSERVER_RULE_FILES": ":".join(str(p) for p in _rules_for_the_test(tmp, flow_file)),
    }
    started = False
    try:
        observer.wait_ready()
        mon_env["OBSERVER_METRICS_TARGETS"] = f"127.0.0.1:{observer.port}"
        _ops_monitoring(mon_env, "start")
        started = True

        def send(records: list[tuple[str, bytes]]) -> None:
            produce(stack.bootstrap_servers, topic, records)

        yield Monitored(
            prometheus=f"http://127.0.0.1:{mon_env['OBSERVER_PROMETHEUS_PORT']}",
            alertmanager=f"http://127.0.0.1:{mon_env['OBSERVER_ALERTMANAGER_PORT']}",
            observer=observer,
            send=send,
        )
    finally:
        if started:
            _ops_monitoring(mon_env, "stop")
        observer.stop()
        admin.delete_topics([topic, *out_topics, f"{prefix}-observer.observer-keyed"])


def _event(etype: str, key: str) -> tuple[str, bytes]:
    return key, json.dumps({"type": etype, "id": key}).encode()


def _alerts(alertmanager: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{alertmanager}/api/v2/alerts", timeout=10)
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()
    return found


def _alert_named(alertmanager: str, name: str) -> dict[str, Any] | None:
    for alert in _alerts(alertmanager):
        labels = alert["labels"]
        if labels.get("alertname") == name and labels.get("flow") == "monitored":
            return alert
    return None


@pytest.fixture(scope="module")
def driven(monitored: Monitored) -> Monitored:
    """Through Kafka: one good instance, a record that is not JSON (a dead letter), and two
    that miss their payment (each `missing` at 1s, and bad for the SLO at 2s)."""
    prom = monitored.prometheus
    # Prometheus scrapes the observer, and has seen the SLO counters at 0 (declared at start)
    _wait(
        "Prometheus to scrape the SLO counters at 0",
        lambda: _series(prom, 'observer_slo_events_total{flow="monitored",result="bad"} == 0'),
    )
    monitored.send([_event("Placed", "good-1"), _event("Paid", "good-1")])
    monitored.send([("bad-json", b"{not json")])
    monitored.send([_event("Placed", "miss-1")])
    # the first `missing` creates its series; rate() needs it seen before the next increment
    _wait(
        "the first missing deviation to be scraped",
        lambda: _series(prom, 'observer_deviations_total{flow="monitored",kind="missing"} > 0'),
    )
    monitored.send([_event("Placed", "miss-2")])
    _wait(
        "the second missing deviation to be scraped",
        lambda: _series(prom, 'observer_deviations_total{flow="monitored",kind="missing"} > 1'),
    )
    return monitored


def test_deviations_and_slo_burn_reach_alertmanager(driven: Monitored) -> None:
    prom, am = driven.prometheus, driven.alertmanager
    # 2 of 3 instances bad: 133x the SLO's 0.5 % budget, and 2 missing per 3 started
    burn = _wait(
        "ObserverSLOBudgetBurnFast in Alertmanager",
        lambda: _alert_named(am, "ObserverSLOBudgetBurnFast"),
    )
    assert burn["labels"]["severity"] == "page"
    assert burn["labels"]["slo_objective"] == "99.5%"
    assert burn["status"]["state"] == "active"
    assert "monitored spends its SLO error budget" in burn["annotations"]["summary"]
    for name, severity in (
        ("ObserverDeviationRateCritical", "page"),
        ("ObserverDeviationRateHigh", "ticket"),
    ):
        alert = _wait(f"{name} in Alertmanager", functools.partial(_alert_named, am, name))
        assert alert["labels"]["severity"] == severity
        assert (alert["labels"]["step"], alert["labels"]["kind"]) == ("paid", "missing")
    # what the observer counted, as Prometheus sees it: miss-2 is bad 2s after it started
    _wait(
        "both unpaid instances to be counted bad",
        lambda: _series(prom, 'observer_slo_events_total{flow="monitored",result="bad"} == 2'),
    )
    (good,) = _series(prom, 'observer_slo_events_total{flow="monitored",result="good"}')
    assert float(good["value"][1]) == 1.0


def _dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL with the dashboard's variables filled in)."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace('=~"$flow"', '=~".*"')
            expr = expr.replace("$__rate_interval", "1m")
            assert "$" not in expr, f"{panel['title']}: a variable the test does not fill in"
            out.append((panel["title"], target["refId"], expr))
    return out


def test_every_dashboard_query_runs_on_prometheus_and_has_data(driven: Monitored) -> None:
    prom = driven.prometheus
    # the SLO recording rules have been evaluated
    _wait(
        "the SLO budget rule to have a value",
        lambda: _series(prom, 'observer_slo:error_budget_remaining:ratio{flow="monitored"}'),
    )
    queries = _dashboard_queries()
    assert len(queries) >= 25
    empty = []
    for title, ref, expr in queries:
        body = _query(prom, expr)
        assert body["status"] == "success", f"{title} {ref}: {expr}: {body}"
        if not body["data"]["result"] and (title, ref) not in MAY_BE_EMPTY:
            empty.append(f"{title} {ref}: {expr}")
    assert empty == [], "panels with no data while the observer runs:\n" + "\n".join(empty)
    assert all(re.match(r"^[A-Z]$", ref) for _, ref, _ in queries)


def test_prometheus_loaded_every_rule_and_reports_no_evaluation_error(
    monitored: Monitored,
) -> None:
    groups = httpx.get(f"{monitored.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    names = {g["name"] for g in groups}
    assert {
        "observer-health",
        "observer-process",
        "observer-pipeline",
        "observer-slo-monitored",
    } <= names
    errors = [
        f"{g['name']}/{r['name']}: {r['lastError']}"
        for g in groups
        for r in g["rules"]
        if r.get("lastError")
    ]
    assert errors == []
    targets = httpx.get(f"{monitored.prometheus}/api/v1/targets", timeout=10).json()["data"]
    (target,) = targets["activeTargets"]
    assert target["health"] == "up", target
