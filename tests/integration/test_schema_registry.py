"""Schema Registry formats against a real Confluent-compatible registry (Apicurio Registry,
`ops/stack start registry`) and the real broker: sources in avro, protobuf and json_schema in
the Confluent wire format, written by confluent-kafka's own serializers; an action published in
the wire format under its subject; `observer replay --schema-registry` reading the same bytes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message_factory import GetMessageClass

from observer.cli import main
from tests.integration.harness import Harness, make, now_ms, outcome_of

__all__ = ["make"]

WRITER = {
    "type": "record",
    "name": "OrderEvent",
    "fields": [
        {"name": "type", "type": "string"},
        {"name": "id", "type": "string"},
        {"name": "total", "type": "long"},
        {"name": "note", "type": "string", "default": ""},
    ],
}
READER = {  # the flow's local schema: the writer's is resolved to it (no `note`, a default)
    "type": "record",
    "name": "OrderEvent",
    "fields": [
        {"name": "type", "type": "string"},
        {"name": "id", "type": "string"},
        {"name": "total", "type": "long"},
        {"name": "channel", "type": "string", "default": "web"},
    ],
}
COMMAND = {
    "type": "record",
    "name": "Command",
    "fields": [
        {"name": "type", "type": "string"},
        {"name": "id", "type": "string"},
        {"name": "total", "type": "long"},
    ],
}
SHIPPED = {
    "type": "object",
    "properties": {"type": {"type": "string"}, "id": {"type": "string"}},
    "required": ["type", "id"],
}

FLOW = """
flow: shop
version: 1
sources:
  orders: {topic: P.orders, format: avro, schema: order.avsc, type: value.type, key: value.id}
  pay: {topic: P.pay, format: protobuf, type: value.type, key: value.id, time: value.at}
  ship: {topic: P.ship, format: json_schema, type: value.type, key: value.id}
steps:
  - step: placed
    on: orders.Placed
    capture: [value.total, value.channel]
  - step: paid
    on: pay.Paid
    within: PAY_WINDOW
    if_missing: [cancel]
  - step: shipped
    on: ship.Shipped
    within: 20s
actions:
  cancel:
    publish:
      topic: P.cmds
      key: "{{ key }}"
      schema: command.avsc
      subject: P.cmds-value
      value: {type: Cancel, id: "{{ key }}", total: "{{ steps.placed.value.total }}"}
"""


def payment_class() -> Any:
    """A Protobuf message class made at run time (no generated code): shop.Payment."""
    fdp = descriptor_pb2.FileDescriptorProto(name="pay.proto", package="shop", syntax="proto3")
    other = fdp.message_type.add(name="Refund")  # index 0: the sender's message is index 1
    other.field.add(name="id", number=1, type=9, label=1)
    msg = fdp.message_type.add(name="Payment")
    msg.field.add(name="type", number=1, type=9, label=1)  # string
    msg.field.add(name="id", number=2, type=9, label=1)
    msg.field.add(name="at", number=3, type=3, label=1)  # int64: epoch ms
    msg.field.add(name="amount", number=4, type=3, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return GetMessageClass(pool.FindMessageTypeByName("shop.Payment"))


class Producers:
    """confluent-kafka's serializers on the registry (each registers its schema)."""

    def __init__(self, url: str, h: Harness) -> None:
        self.client = SchemaRegistryClient({"url": url})
        self.h = h
        self.avro = AvroSerializer(self.client, json.dumps(WRITER))
        self.payment = payment_class()
        self.proto = ProtobufSerializer(self.payment, self.client, {"use.deprecated.format": False})
        self.json = JSONSerializer(json.dumps(SHIPPED), self.client)

    def ctx(self, name: str) -> SerializationContext:
        return SerializationContext(self.h.t(name), MessageField.VALUE)

    def placed(self, key: str, total: int) -> bytes:
        value = {"type": "Placed", "id": key, "total": total, "note": "n"}
        return bytes(self.avro(value, self.ctx("orders")))

    def paid(self, key: str, at: int) -> bytes:
        msg = self.payment(type="Paid", id=key, at=at)  # amount unset: 0, still readable
        return bytes(self.proto(msg, self.ctx("pay")))

    def shipped(self, key: str) -> bytes:
        return bytes(self.json({"type": "Shipped", "id": key}, self.ctx("ship")))


@pytest.fixture
def shop(
    make: Callable[..., Harness], schema_registry: str, tmp_path: Path
) -> tuple[Harness, Producers]:
    (tmp_path / "order.avsc").write_text(json.dumps(READER))
    (tmp_path / "command.avsc").write_text(json.dumps(COMMAND))
    h = make(FLOW, schema_registry_url=schema_registry)
    return h, Producers(schema_registry, h)


def test_registry_formats_are_read_and_an_action_is_published_in_the_wire_format(
    shop: tuple[Harness, Producers], schema_registry: str
) -> None:
    h, p = shop
    h.start()
    t = now_ms()
    h.send("Placed", "k1", t, raw=p.placed("k1", 120))
    h.send("Paid", "k1", t + 10, raw=p.paid("k1", t + 10))
    h.send("Shipped", "k1", t + 20, raw=p.shipped("k1"))
    h.send("Placed", "k2", t, raw=p.placed("k2", 75))  # never paid: cancelled
    h.send("Shipped", "k3", t, raw=p.shipped("k3")[:5] + b'{"type": 5}')  # fails its schema
    outcome = outcome_of(h, "k1")
    assert outcome["outcome"] == "completed"
    assert set(outcome["steps"]) == {"placed", "paid", "shipped"}
    (cmd,) = h.wait_for(lambda: h.out("cmds"), message="the cancel command")
    registered = p.client.get_latest_version(h.t("cmds") + "-value")
    assert cmd.value[0] == 0 and int.from_bytes(cmd.value[1:5], "big") == registered.schema_id
    read = AvroDeserializer(p.client)(
        cmd.value, SerializationContext(h.t("cmds"), MessageField.VALUE)
    )
    assert read == {"type": "Cancel", "id": "k2", "total": 75}
    (dead,) = h.wait_for(lambda: h.out("dlq"), message="the dead letter")
    assert dead.headers["observer-error"].startswith(b"cannot decode json_schema value: ")
    assert b"5 is not of type 'string'" in dead.headers["observer-error"]


def test_replay_reads_the_wire_format_with_the_registry_or_decoded_values_without(
    shop: tuple[Harness, Producers], schema_registry: str, tmp_path: Path
) -> None:
    h, p = shop
    t = 1_767_225_600_000
    lines = [
        {"topic": h.t("orders"), "value": p.placed("k1", 9), "timestamp": t},
        {"topic": h.t("pay"), "value": p.paid("k1", t + 5), "timestamp": t + 5},
        {"topic": h.t("ship"), "value": p.shipped("k1"), "timestamp": t + 6},
        {"topic": h.t("orders"), "value": p.placed("k2", 5), "timestamp": t + 7},
    ]
    events = tmp_path / "events.jsonl"
    events.write_text(
        "".join(
            orjson.dumps({**r, "value": base64.b64encode(r["value"]).decode()}).decode() + "\n"
            for r in lines
        )
    )
    run = CliRunner().invoke
    args = ["replay", str(h.flow_file), "--events", str(events)]
    with_registry = [*args, "--schema-registry", schema_registry]
    done = run(main, with_registry, catch_exceptions=False)  # replay never registers
    subject = h.t("cmds") + "-value"
    assert done.exit_code == 2 and f"subject '{subject}': the registry answered 404" in done.output
    p.client.register_schema(subject, Schema(json.dumps(COMMAND), "AVRO"))
    done = run(main, with_registry, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    out = [orjson.loads(line) for line in done.stdout.splitlines()]
    outcomes = [o["value"] for o in out if o["topic"] == "observer.outcomes"]
    assert [(o["key"], o["outcome"]) for o in outcomes] == [("k1", "completed")]
    (cmd,) = [o for o in out if o["topic"] == h.t("cmds")]
    raw = base64.b64decode(cmd["value"])
    assert raw[0] == 0 and int.from_bytes(raw[1:5], "big") > 0  # the registry's id
    # without a registry: wire-format bytes of protobuf cannot be read (a dead letter says so)
    done = run(main, args, catch_exceptions=False)
    out = [orjson.loads(line) for line in done.stdout.splitlines()]
    dead = [o for o in out if o["topic"] == "observer.dlq"]
    registry_formats = (h.t("pay"), h.t("ship"))
    assert [
        d["headers"]["observer-error"]
        for d in dead
        if d["headers"]["observer-source-topic"] in registry_formats
    ] == [
        "cannot decode protobuf value: no schema registry to read protobuf (its wire format)",
        "cannot decode json_schema value: no schema registry to read json_schema (its wire format)",
    ]
