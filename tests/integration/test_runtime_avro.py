"""Avro sources in the Confluent wire format, writer schemas from a schema registry over HTTP
(a small registry served by http.server on 127.0.0.1), through the real broker."""

from __future__ import annotations

import http.server
import io
import json
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest

from tests.integration.harness import Harness, make, now_ms, outcome_of

__all__ = ["make"]

WRITER = {
    "type": "record",
    "name": "OrderEvent",
    "fields": [
        {"name": "type", "type": "string"},
        {"name": "id", "type": "string"},
        {"name": "note", "type": "string", "default": ""},
    ],
}
READER = {
    "type": "record",
    "name": "OrderEvent",
    "fields": [{"name": "type", "type": "string"}, {"name": "id", "type": "string"}],
}

FLOW = """
flow: shop
version: 1
sources:
  orders: {topic: P.orders, format: avro, schema: SCHEMA, type: value.type, key: value.id}
  pay: {topic: P.pay, type: value.type, key: value.id}
steps:
  - step: placed
    on: orders.Placed
  - step: paid
    on: pay.Paid
    within: 20s
"""


class Registry(http.server.BaseHTTPRequestHandler):
    schemas: dict[int, dict[str, Any]] = {}
    requests: list[str] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        sid = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/schemas/ids/") else -1
        if sid in type(self).schemas:
            body = json.dumps({"schema": json.dumps(type(self).schemas[sid])}).encode()
            self.send_response(200)
        else:
            body = b'{"error_code": 40403, "message": "Schema not found"}'
            self.send_response(404)
        self.send_header("content-type", "application/vnd.schemaregistry.v1+json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[str]:
    Registry.schemas = {7: WRITER}
    Registry.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def avro(schema: dict[str, Any], value: dict[str, Any], schema_id: int | None = None) -> bytes:
    buf = io.BytesIO()
    if schema_id is not None:
        buf.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), value)
    return buf.getvalue()


def test_avro_values_are_read_with_the_registry_schema_or_the_local_one(
    registry: str, make: Callable[..., Harness], tmp_path: Path
) -> None:
    (tmp_path / "order.avsc").write_text(json.dumps(READER))
    h = make(FLOW.replace("SCHEMA", str(tmp_path / "order.avsc")), schema_registry_url=registry)
    h.start()
    t = now_ms()
    h.send(
        "Placed",
        "a1",
        t,
        raw=avro(WRITER, {"type": "Placed", "id": "a1", "note": "wire format"}, 7),
    )
    h.send("Placed", "a2", t, raw=avro(READER, {"type": "Placed", "id": "a2"}))  # plain schemaless
    h.send(
        "Placed", "a3", t, raw=avro(WRITER, {"type": "Placed", "id": "a3", "note": ""}, 99)
    )  # unknown id
    h.send(
        "Placed", "a4", t + 1, raw=avro(WRITER, {"type": "Placed", "id": "a4", "note": "again"}, 7)
    )
    for key in ("a1", "a2", "a4"):
        h.send("Paid", key, t + 100)
    for key in ("a1", "a2", "a4"):
        assert outcome_of(h, key)["outcome"] == "completed"
    (dead,) = h.wait_for(lambda: h.out("dlq"), message="dead letter")
    assert (
        b"schema id 99" in dead.headers["observer-error"]
        and dead.value is not None
        and dead.value[1:5] == struct.pack(">I", 99)
    )
    assert Registry.requests.count("/schemas/ids/7") == 1  # cached
