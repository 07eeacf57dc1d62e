"""docker-compose.yml agrees with ops/stack: same Kafka version and host ports, Redis with AOF,
the observer wired to both; Prometheus scraping it with the rules of ops/monitoring/, sending to
Alertmanager, Grafana provisioned with the dashboard; monitoring images pinned. Pure file checks:
no Docker needed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load(ROOT / "docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def stack_default(name: str) -> str:
    """The default ops/stack gives a setting, from its line `NAME="${OBSERVER_NAME:-value}"`."""
    text = (ROOT / "ops" / "stack").read_text()
    match = re.search(rf'^{name}="\$\{{OBSERVER_{name}:-([^}}]+)\}}"$', text, re.M)
    assert match, f"ops/stack has no {name} default line"
    return match.group(1)


def published_host_ports(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port, from short syntax "[ip:]host:container" entries."""
    ports: dict[int, int] = {}
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        assert len(parts) in (2, 3), entry
        ports[int(parts[-1])] = int(parts[-2])
    return ports


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


MONITORING = ROOT / "ops" / "monitoring"


def test_the_services_exist(services: dict[str, Any]) -> None:
    assert {"kafka", "redis", "observer", "prometheus", "alertmanager", "grafana"} <= set(services)


def test_stack_defaults_are_parsed() -> None:
    assert stack_default("KAFKA_PORT") == "9092"
    assert stack_default("REDIS_PORT") == "6379"
    assert re.fullmatch(r"4\.\d+\.\d+", stack_default("KAFKA_VERSION"))


def test_kafka_matches_ops_stack_version_and_port(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert kafka["image"] == f"apache/kafka:{stack_default('KAFKA_VERSION')}"
    port = int(stack_default("KAFKA_PORT"))
    assert published_host_ports(kafka) == {port: port}
    settings = env(kafka)
    assert settings["KAFKA_PROCESS_ROLES"] == "broker,controller"
    # What the host connects to must be advertised as the published address.
    assert f"127.0.0.1:{port}" in settings["KAFKA_ADVERTISED_LISTENERS"]
    assert settings["KAFKA_NUM_PARTITIONS"] == "4"
    assert settings["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    for name in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
    ):
        assert settings[name] == "1", name


def test_redis_matches_ops_stack_port_and_keeps_an_aof(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    port = int(stack_default("REDIS_PORT"))
    assert published_host_ports(redis) == {port: port}
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command


def test_observer_runs_the_mounted_flows_against_kafka_and_redis(
    services: dict[str, Any],
) -> None:
    observer = services["observer"]
    assert observer["build"] == "."
    assert observer["command"] == ["observer", "run", "/flows"]
    assert "./flows:/flows:ro" in observer["volumes"]
    assert "./schemas:/schemas:ro" in observer["volumes"]
    assert published_host_ports(observer) == {8000: 8000}
    settings = env(observer)
    kafka_env = env(services["kafka"])
    host, _, port = settings["OBSERVER_BOOTSTRAP_SERVERS"].partition(":")
    # The address the observer uses is one the broker advertises to containers.
    assert f"{host}:{port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert f":{port}" in kafka_env["KAFKA_LISTENERS"]
    assert host == "kafka"
    assert settings["OBSERVER_REDIS_URL"].startswith("redis://redis:6379")
    assert settings["OBSERVER_HTTP_PORT"] == "8000"
    # the API listens on 127.0.0.1 by default: the container must listen on its interface
    # for the published port to reach it (published on the host's loopback only)
    assert settings["OBSERVER_HTTP_HOST"] == "0.0.0.0"
    assert all(str(p).startswith("127.0.0.1:") for p in observer["ports"])
    assert set(observer["depends_on"]) == {"kafka", "redis"}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (relative to the repository), from "host:container[:ro]"."""
    found = {}
    for entry in service.get("volumes", []):
        host, container = str(entry).split(":")[:2]
        found[container] = host
    return found


def repo_path(host: str) -> Path:
    assert host.startswith("./"), host
    return ROOT / host[2:]


@pytest.mark.parametrize(
    ("name", "repository"),
    [
        ("prometheus", "prom/prometheus"),
        ("alertmanager", "prom/alertmanager"),
        ("grafana", "grafana/grafana"),
    ],
)
def test_monitoring_images_are_pinned_to_a_version(
    services: dict[str, Any], name: str, repository: str
) -> None:
    image = str(services[name]["image"])
    repo, _, tag = image.partition(":")
    assert repo == repository
    assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"


def test_prometheus_scrapes_the_observer_with_the_rules_and_alerts_to_alertmanager(
    services: dict[str, Any],
) -> None:
    prometheus = services["prometheus"]
    mounted = mounts(prometheus)
    config_path = repo_path(mounted["/etc/prometheus/prometheus.yml"])
    assert config_path == MONITORING / "prometheus" / "prometheus.yml"
    config = _load(config_path)
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert "observer:8000" in targets
    assert all(
        job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"]
    )
    # the rule files Prometheus loads are the shipped ones
    rules_dir = repo_path(mounted["/etc/prometheus/rules"])
    assert rules_dir == MONITORING / "prometheus" / "rules"
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert {p.name for p in rules_dir.glob("*.yml")} >= {"observer.rules.yml", "slo.rules.yml"}
    # ... and its alerts go to the alertmanager service's container port
    (am_target,) = [
        t
        for am in config["alerting"]["alertmanagers"]
        for static in am["static_configs"]
        for t in static["targets"]
    ]
    host, _, port = am_target.partition(":")
    assert host == "alertmanager"
    assert int(port) in published_host_ports(services["alertmanager"])
    assert "alertmanager" in prometheus["depends_on"]
    # samples are kept longer than the SLOs' window (28 days)
    assert "--storage.tsdb.retention.time=30d" in prometheus["command"]
    assert published_host_ports(prometheus) == {9090: 9090}


def test_alertmanager_uses_the_shipped_config_on_the_port_ops_monitoring_uses(
    services: dict[str, Any],
) -> None:
    alertmanager = services["alertmanager"]
    host = mounts(alertmanager)["/etc/alertmanager/alertmanager.yml"]
    assert repo_path(host) == MONITORING / "alertmanager.yml"
    config = _load(MONITORING / "alertmanager.yml")
    receivers = {r["name"] for r in config["receivers"]}
    assert {"page", "ticket"} <= receivers
    assert config["route"]["receiver"] in receivers
    run = (MONITORING / "run").read_text()
    default = re.search(r'^ALERTMANAGER_PORT="\$\{OBSERVER_ALERTMANAGER_PORT:-(\d+)\}"$', run, re.M)
    assert default, "ops/monitoring/run has no ALERTMANAGER_PORT default line"
    assert published_host_ports(alertmanager) == {9093: int(default.group(1))}
    # not 9093 on the host: that is ops/stack's Kafka controller
    assert int(default.group(1)) != int(stack_default("KAFKA_CONTROLLER_PORT"))


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(
    services: dict[str, Any],
) -> None:
    grafana = services["grafana"]
    mounted = mounts(grafana)
    provisioning = repo_path(mounted["/etc/grafana/provisioning"])
    dashboards = repo_path(mounted["/var/lib/grafana/dashboards"])
    (datasource,) = _load(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = _load(provisioning / "dashboards" / "observer.yml")["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((dashboards / "observer.json").read_text())
    used = {
        target["datasource"]["uid"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }
    assert used == {datasource["uid"]}
    assert published_host_ports(grafana) == {3000: 3000}
    assert "prometheus" in grafana["depends_on"]


def test_the_image_runs_the_observer_on_port_8000() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^EXPOSE 8000$", dockerfile, re.M)
    assert 'CMD ["observer", "run", "/flows"]' in dockerfile


PINNED = re.compile(r"^[\w./-]+:v?\d+\.\d+(\.\d+)?([-\w.]*)?(@sha256:[0-9a-f]{64})?$")


def test_every_image_is_pinned_to_an_explicit_version(services: dict[str, Any]) -> None:
    images = {name: str(s["image"]) for name, s in services.items() if "image" in s}
    assert set(images) == {"kafka", "redis", "prometheus", "alertmanager", "grafana"}
    for name, image in images.items():
        assert PINNED.match(image), f"{name}: {image} is not pinned to a version"
        assert not image.endswith(":latest")
    (base,) = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert PINNED.match(base), f"the Dockerfile's base image {base} is not pinned"


def test_the_image_has_the_flows_and_their_schemas_side_by_side() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY flows /flows$", dockerfile, re.M)
    assert re.search(r"^COPY schemas /schemas$", dockerfile, re.M)
