"""Schema Registry formats without a registry: what validation accepts, what replay does with
values already decoded, what a start without a registry refuses, and that the registry's
secrets are never shown."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest

from observer.adapters.schema_registry import registry_parts
from observer.config import ObserverConfig
from observer.errors import ConfigError, FlowError
from observer.flows.compiler import load_registry
from observer.replay import run_replay

FLOW = """
flow: shop
version: 1
sources:
  orders: {topic: orders, format: json_schema, type: value.type, key: value.id}
  pay: {topic: pay, format: protobuf, type: value.type, key: value.id, time: value.at}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 1m
    if_missing: [cancel]
actions:
  cancel:
    publish: {topic: cmds, key: "{{ key }}", schema: cmd.avsc, subject: cmds-value, value: {id: "{{ key }}"}}
"""
CMD = {"type": "record", "name": "Cmd", "fields": [{"name": "id", "type": "string"}]}


@pytest.fixture
def flow(tmp_path: Path) -> Path:
    (tmp_path / "cmd.avsc").write_text(json.dumps(CMD))
    path = tmp_path / "flow.yaml"
    path.write_text(FLOW)
    return path


def test_replay_takes_decoded_values_of_registry_formats(flow: Path, tmp_path: Path) -> None:
    t = 1_767_225_600_000
    events = tmp_path / "events.jsonl"
    lines = [
        {"topic": "orders", "value": {"type": "Placed", "id": "a"}, "timestamp": t},
        {"topic": "pay", "value": {"type": "Paid", "id": "a", "at": t + 5}, "timestamp": t + 9},
        {"topic": "orders", "value": {"type": "Placed", "id": "b"}, "timestamp": t},
    ]
    events.write_text("".join(orjson.dumps(line).decode() + "\n" for line in lines))
    out = [orjson.loads(x) for x in run_replay(str(flow), str(events), t + 120_000, [])]
    outcomes = [o["value"] for o in out if o["topic"] == "observer.outcomes"]
    assert [(o["key"], o["steps"]["paid"]) for o in outcomes] == [("a", "2026-01-01T00:00:00.005Z")]
    (cmd,) = [o for o in out if o["topic"] == "cmds"]
    assert cmd["value"] == "AmI="  # the Avro body (no registry: no wire-format header)


def test_validation_of_registry_formats(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        FLOW.replace("format: protobuf,", "format: protobuf, schema: x.avsc,").replace(
            "schema: cmd.avsc, ", ""
        )
    )
    with pytest.raises(FlowError) as err:
        load_registry([bad])
    text = str(err.value)
    assert "'schema' is only for format: avro" in text
    assert "'subject' needs 'schema'" in text


def test_a_start_without_a_registry_names_what_needs_one(flow: Path) -> None:
    with pytest.raises(ConfigError) as err:
        registry_parts(
            None, load_registry([flow]), negative_ttl_s=1, max_ids=1, monotonic=time.monotonic
        )
    message = str(err.value)
    assert message.startswith("a schema registry is needed (set OBSERVER_SCHEMA_REGISTRY_URL)")
    assert "flow shop source orders (format: json_schema)" in message
    assert "flow shop source pay (format: protobuf)" in message
    assert "subject 'cmds-value' (flow shop v1 action cancel)" in message


def test_registry_settings_and_their_secrets() -> None:
    config = ObserverConfig.load(
        {},
        {
            "OBSERVER_SCHEMA_REGISTRY_URL": "https://registry.example:8081",
            "OBSERVER_SCHEMA_REGISTRY_BASIC_AUTH": "svc:s3cret-pass",
            "OBSERVER_SCHEMA_REGISTRY_CA": "/etc/ca.pem",
            "OBSERVER_SCHEMA_REGISTRY_KEY_PASSWORD": "k3y-pass",
            "OBSERVER_SCHEMA_REGISTRY_TIMEOUT_MS": "500",
        },
    )
    assert config.schema_registry_settings() == {
        "url": "https://registry.example:8081",
        "timeout": 0.5,
        "max.retries": 0,
        "basic.auth.user.info": "svc:s3cret-pass",
        "ssl.ca.location": "/etc/ca.pem",
        "ssl.key.password": "k3y-pass",
    }
    shown = json.dumps(config.describe())
    assert "s3cret" not in shown and "k3y-pass" not in shown
    assert ObserverConfig().schema_registry_settings() is None
