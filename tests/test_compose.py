"""docker-compose.yml agrees with ops/stack: same Kafka version and host ports, Redis with AOF,
the observer wired to both, Prometheus scraping it. Pure file checks: no Docker needed."""

from __future__ import annotations

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


def test_the_four_services_exist(services: dict[str, Any]) -> None:
    assert {"kafka", "redis", "observer", "prometheus"} <= set(services)


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


def test_prometheus_scrapes_the_observer() -> None:
    compose_prom = _load(ROOT / "docker-compose.yml")["services"]["prometheus"]
    assert "./ops/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in compose_prom["volumes"]
    config = _load(ROOT / "ops" / "prometheus.yml")
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


def test_the_image_runs_the_observer_on_port_8000() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^EXPOSE 8000$", dockerfile, re.M)
    assert 'CMD ["observer", "run", "/flows"]' in dockerfile


PINNED = re.compile(r"^[\w./-]+:v?\d+\.\d+(\.\d+)?([-\w.]*)?(@sha256:[0-9a-f]{64})?$")


def test_every_image_is_pinned_to_an_explicit_version(services: dict[str, Any]) -> None:
    images = {name: str(s["image"]) for name, s in services.items() if "image" in s}
    assert set(images) == {"kafka", "redis", "prometheus"}
    for name, image in images.items():
        assert PINNED.match(image), f"{name}: {image} is not pinned to a version"
        assert not image.endswith(":latest")
    (base,) = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert PINNED.match(base), f"the Dockerfile's base image {base} is not pinned"


def test_the_image_has_the_flows_and_their_schemas_side_by_side() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY flows /flows$", dockerfile, re.M)
    assert re.search(r"^COPY schemas /schemas$", dockerfile, re.M)
