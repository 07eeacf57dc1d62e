"""The schema registry as a hostile sender meets it: schema ids chosen by records, a registry
that fails or hangs. confluent-kafka's client against a small registry on 127.0.0.1 (answers,
failures and delays on demand), with a manual clock for the negative cache."""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import fastavro
import pytest
from google.protobuf import descriptor_pb2

from observer.adapters.schema_registry import RegistryDecoder, SchemaLookups, SchemaUnavailable
from observer.adapters.schema_registry.lookups import connect
from observer.flows.compiled import CompiledSource
from observer.flows.selectors import compile_selector

AVRO = {
    "type": "record",
    "name": "E",
    "fields": [{"name": "type", "type": "string"}, {"name": "id", "type": "string"}],
}


class Registry(http.server.BaseHTTPRequestHandler):
    schemas: dict[int, dict[str, Any]] = {}
    failing: dict[int, int] = {}  # id -> HTTP status
    slow: dict[int, float] = {}  # id -> seconds before answering
    requests: list[int] = []

    def do_GET(self) -> None:
        sid = int(self.path.split("?")[0].rsplit("/", 1)[-1])
        type(self).requests.append(sid)
        time.sleep(type(self).slow.get(sid, 0))
        status = type(self).failing.get(sid, 200 if sid in type(self).schemas else 404)
        body = (
            json.dumps(type(self).schemas[sid])
            if status == 200
            else json.dumps({"error_code": status * 100 + 3, "message": f"status {status}"})
        ).encode()
        self.send_response(status)
        self.send_header("content-type", "application/vnd.schemaregistry.v1+json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client gave up
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    Registry.schemas = {7: {"schema": json.dumps(AVRO)}}
    Registry.failing, Registry.slow, Registry.requests = {}, {}, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lookups(url: str, clock: Clock, max_ids: int = 100, timeout: float = 2.0) -> SchemaLookups:
    client = connect({"url": url, "timeout": timeout, "max.retries": 0})
    return SchemaLookups(client, negative_ttl_s=30.0, max_ids=max_ids, monotonic=clock)


def test_a_schema_is_asked_once_and_a_failing_id_not_again_for_a_while(url: str) -> None:
    clock = Clock()
    lk = lookups(url, clock)
    assert lk.schema("s", 7).schema_str == json.dumps(AVRO)
    lk.schema("s", 7)
    with pytest.raises(SchemaUnavailable, match=r"schema id 99: the registry answered 404"):
        lk.schema("s", 99)
    with pytest.raises(SchemaUnavailable, match="not asked again"):
        lk.schema("s", 99)
    Registry.failing[50] = 503
    with pytest.raises(SchemaUnavailable, match="the registry answered 503"):
        lk.schema("s", 50)
    assert Registry.requests == [7, 99, 50]  # cached; no retry of the 503
    clock.now += 31.0
    Registry.schemas[99] = {"schema": json.dumps(AVRO)}
    lk.schema("s", 99)  # asked again once the negative cache let it go
    assert Registry.requests == [7, 99, 50, 99]


def test_a_lookup_waits_a_bounded_time(url: str) -> None:
    Registry.slow[60] = 3.0
    lk = lookups(url, Clock(), timeout=0.3)
    with pytest.raises(SchemaUnavailable, match=r"cannot be reached \(ReadTimeout"):
        lk.schema("s", 60)  # given up after the client's timeout, not retried
    assert Registry.requests == [60]


def test_a_source_brings_a_bounded_number_of_distinct_ids(url: str) -> None:
    lk = lookups(url, Clock(), max_ids=3)
    lk.schema("a", 7)
    for sid in (98, 99):
        with pytest.raises(SchemaUnavailable):
            lk.schema("a", sid)
    with pytest.raises(SchemaUnavailable, match="more than 3 distinct schema ids"):
        lk.schema("a", 51)
    assert 51 not in Registry.requests
    lk.schema("b", 7)  # another source has its own bound


def source(fmt: str, schema: Any = None, text: str | None = None) -> CompiledSource:
    sel = compile_selector("value.type")
    return CompiledSource("s", "t", fmt, schema, sel, sel, None, sel, "", "", "", text)  # type: ignore[arg-type]


def wire(sid: int, body: bytes) -> bytes:
    return b"\x00" + sid.to_bytes(4, "big") + body


def test_avro_is_read_with_the_writer_schema_resolved_to_the_local_one(url: str) -> None:
    reader = {**AVRO, "fields": [*AVRO["fields"], {"name": "n", "type": "int", "default": 3}]}
    decoder = RegistryDecoder(lookups(url, Clock()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(AVRO), {"type": "T", "id": "x"})
    local = source("avro", fastavro.parse_schema(reader), json.dumps(reader))
    assert decoder(wire(7, buf.getvalue()), local) == {"type": "T", "id": "x", "n": 3}
    plain = io.BytesIO()
    fastavro.schemaless_writer(
        plain, fastavro.parse_schema(reader), {"type": "P", "id": "y", "n": 1}
    )
    assert decoder(plain.getvalue(), local) == {"type": "P", "id": "y", "n": 1}  # no magic byte
    with pytest.raises(SchemaUnavailable) as err:
        decoder(wire(99, buf.getvalue()), local)
    assert err.value.code == "schema"
    with pytest.raises(ValueError, match="not in the Confluent wire format"):
        decoder(b"\x07abc", source("json_schema"))


def test_protobuf_messages_become_dicts_by_field_name(url: str) -> None:
    fdp = descriptor_pb2.FileDescriptorProto(name="e.proto", package="p", syntax="proto3")
    enum = fdp.enum_type.add(name="Kind")
    enum.value.add(name="NONE", number=0)
    enum.value.add(name="PAID", number=1)
    inner = fdp.message_type.add(name="Line")
    inner.field.add(name="sku", number=1, type=9, label=1)
    msg = fdp.message_type.add(name="Event")
    msg.field.add(name="kind", number=1, type=14, label=1, type_name=".p.Kind")
    msg.field.add(name="at", number=2, type=3, label=1)  # int64
    msg.field.add(name="lines", number=3, type=11, label=3, type_name=".p.Line")
    msg.field.add(name="blob", number=4, type=12, label=1)
    msg.field.add(name="first", number=5, type=11, label=1, type_name=".p.Line")
    Registry.schemas[8] = {
        "schemaType": "PROTOBUF",
        "schema": base64.b64encode(fdp.SerializeToString()).decode(),
    }
    from google.protobuf import descriptor_pool
    from google.protobuf.message_factory import GetMessageClass

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    cls = GetMessageClass(pool.FindMessageTypeByName("p.Event"))
    line = GetMessageClass(pool.FindMessageTypeByName("p.Line"))
    body = cls(
        kind=1, at=2**40, lines=[line(sku="a"), line(sku="b")], blob=b"\x01"
    ).SerializeToString()
    decoder = RegistryDecoder(lookups(url, Clock()))
    value = decoder(wire(8, b"\x02\x02" + body), source("protobuf"))  # message index [1]
    assert value == {
        "kind": "PAID",
        "at": 2**40,
        "lines": [{"sku": "a"}, {"sku": "b"}],
        "blob": "AQ==",
        "first": None,
    }
    Registry.schemas[9] = {"schemaType": "PROTOBUF", "schema": 'syntax = "proto3";'}
    with pytest.raises(SchemaUnavailable, match=r"as \.proto text"):
        decoder(wire(9, b"\x00" + body), source("protobuf"))
