"""Issue 12: integers beyond 64 bits in event data are never rounded into another key or id.

orjson reads 10^30 and 10^30 + 1 as the same double; keys and ids are read again exactly and
kept as their decimal text. Times that large are dead-lettered (out of range). A captured value
is stored as `observer run` reads it from Kafka (the nearest double: the state store keeps
64-bit integers), the same in replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from observer.flows.compiler import load_registry
from observer.ingest import Ingest, SourceRecord
from observer.jsonexact import dumps, loads
from observer.replay import run_replay
from observer.topics import Topics
from tests.unit.replay_harness import BASE_FLOW, T0

BIG = 10**30


def ingest(tmp_path: Path) -> Ingest:
    f = tmp_path / "flow.yaml"
    f.write_text(BASE_FLOW.replace("id: header.eid}", "id: value.eid}", 1))
    return Ingest(load_registry([f]), Topics())


def record(value: bytes, offset: int = 0) -> SourceRecord:
    return SourceRecord("orders", 0, offset, None, value, [], T0)


def test_keys_and_ids_beyond_64_bits_are_kept_exact_from_bytes(tmp_path: Path) -> None:
    reader = ingest(tmp_path)
    keys, ids = set(), set()
    for n in (BIG, BIG + 1, 2**64, 2**64 + 1, -(2**63) - 1, -(2**63) - 2):
        raw = b'{"type": "Placed", "id": %d, "eid": %d, "total": 1}' % (n, n)
        out = reader.decode(record(raw))
        assert out.dead_letter is None
        ((_, event),) = out.events
        assert event.key == str(n) and event.id == str(n)
        keys.add(event.key)
        ids.add(event.id)
    assert len(keys) == len(ids) == 6  # none merged


def test_a_float_key_stays_as_before(tmp_path: Path) -> None:
    ((_, event),) = ingest(tmp_path).decode(record(b'{"type": "Placed", "id": 1.5e30}')).events
    assert event.key == "1.5e+30"


def test_a_time_beyond_64_bits_is_dead_lettered(tmp_path: Path) -> None:
    f = tmp_path / "flow.yaml"
    f.write_text(BASE_FLOW.replace("id: header.eid}", "id: header.eid, time: value.at}", 1))
    reader = Ingest(load_registry([f]), Topics())
    for at in (b"%d" % BIG, b'"%d"' % BIG, b'"' + b"9" * 5000 + b'"'):
        out = reader.decode(record(b'{"type": "Placed", "id": "o1", "at": ' + at + b"}"))
        assert out.dead_letter is not None and out.reason is not None
        assert "out of range" in out.reason and len(out.reason) < 200


def test_captured_big_integers_are_stored_as_orjson_reads_them_in_both_paths(
    tmp_path: Path,
) -> None:
    reader = ingest(tmp_path)
    raw = b'{"type": "Placed", "id": "o1", "total": %d}' % BIG
    ((_, from_bytes),) = reader.decode(record(raw)).events
    ((_, decoded),) = reader.decode(record(loads(raw))).events  # what replay passes
    assert from_bytes.captures == decoded.captures == {"value.total": float(BIG)}
    nested = {"type": "Placed", "id": "o1", "total": [BIG, {"a": -(2**70)}, 5]}
    ((_, event),) = reader.decode(record(nested)).events  # type: ignore[arg-type]
    assert event.captures == {"value.total": [float(BIG), {"a": float(-(2**70))}, 5]}
    orjson.dumps(event.captures)  # storable


def test_jsonexact_reads_and_writes_exactly() -> None:
    assert loads(b'{"a": %d}' % BIG) == {"a": BIG}
    assert loads(b'{"a": 1}') == {"a": 1}
    assert dumps({"a": BIG, "b": [1.5]}) == b'{"a":%d,"b":[1.5]}' % BIG
    assert dumps({"a": 1}) == orjson.dumps({"a": 1})


def lines_of(tmp_path: Path, events: list[dict[str, Any]], flow: str = BASE_FLOW) -> list[Any]:
    (tmp_path / "flow.yaml").write_text(flow)
    text = "".join(
        json.dumps(e).replace('"@BIG@"', str(BIG)).replace('"@BIG1@"', str(BIG + 1)) + "\n"
        for e in events
    )
    (tmp_path / "events.jsonl").write_text(text)
    out = run_replay(str(tmp_path / "flow.yaml"), str(tmp_path / "events.jsonl"), None, [])
    return [json.loads(line) for line in out]  # exact, unlike orjson


def test_replay_never_merges_two_keys_of_more_than_64_bits(tmp_path: Path) -> None:
    def ev(etype: str, key: str, at_s: int) -> dict[str, Any]:
        topic = {"Placed": "orders", "Paid": "pay", "Shipped": "ship"}[etype]
        return {
            "topic": topic,
            "key": None,
            "value": {"type": etype, "id": key, "total": 1},
            "headers": {"eid": f"{etype}-{key}"},
            "timestamp": T0 + at_s * 1000,
        }

    events = [
        ev("Placed", "@BIG@", 0),
        ev("Placed", "@BIG1@", 1),  # a different order: starts its own instance
        ev("Paid", "@BIG@", 2),
        ev("Shipped", "@BIG@", 3),
    ]
    lines = lines_of(tmp_path, events)
    outcomes = [x for x in lines if x["topic"] == "observer.outcomes"]
    alerts = [x for x in lines if x["topic"] == "observer.alerts"]
    assert [(o["key"], o["value"]["outcome"]) for o in outcomes] == [(str(BIG), "completed")]
    # the other order misses its payment: its own alert, under its own exact key
    assert {(a["key"], a["value"]["kind"]) for a in alerts} == {
        (str(BIG + 1), "warning"),
        (str(BIG + 1), "missing"),
    }


def test_replay_dead_letters_a_time_beyond_64_bits_and_keeps_the_record_exact(
    tmp_path: Path,
) -> None:
    flow = BASE_FLOW.replace("id: header.eid}", "id: header.eid, time: value.at}", 1)
    event = {
        "topic": "orders",
        "key": "@BIG@",
        "value": {"type": "Placed", "id": "o1", "at": "@BIG@"},
        "headers": {"eid": "e1", "n": "@BIG1@"},
        "timestamp": T0,
    }
    (line,) = lines_of(tmp_path, [event], flow)
    assert line["topic"] == "observer.dlq"
    assert line["value"] == {"type": "Placed", "id": "o1", "at": BIG}  # unchanged, exact
    assert line["key"] == str(BIG) and line["headers"]["n"] == str(BIG + 1)
    assert "out of range" in line["headers"]["observer-error"]


def test_alias_values_beyond_64_bits_stay_exact_and_never_merge_two_orders(
    tmp_path: Path,
) -> None:
    """Tracking numbers 10^30 and 10^30 + 1 (read as the same float by orjson) belong to two
    different orders: no alias_conflict, each carrier event reaches its own order."""
    flow = (Path(__file__).parents[1] / "golden" / "delivery.flow.yaml").read_text()

    def ev(topic: str, value: dict[str, Any], eid: str, at_s: int) -> dict[str, Any]:
        return {
            "topic": topic,
            "key": None,
            "value": value,
            "headers": {"event_id": eid},
            "timestamp": T0 + at_s * 1000,
        }

    events = []
    for i, tracking in enumerate(("@BIG@", "@BIG1@")):
        order = f"o-{i}"
        shipping = {"order_id": order, "tracking_no": tracking}
        events += [
            ev("shop.shipping", {"type": "ReadyToShip", **shipping}, f"r{i}", i),
            ev("shop.shipping", {"type": "TransportBooked", **shipping}, f"b{i}", 10 + i),
        ]
    for i, tracking in enumerate(("@BIG@", "@BIG1@")):
        carrier = {"tracking_no": tracking, "at": T0 + (20 + i) * 1000}
        events.append(ev("carrier.events", {"status": "PickedUp", **carrier}, f"p{i}", 20 + i))
        carrier = {"tracking_no": tracking, "at": T0 + (30 + i) * 1000}
        events.append(ev("carrier.events", {"status": "Delivered", **carrier}, f"d{i}", 30 + i))
    lines = lines_of(tmp_path, events, flow)
    alerts = [x["value"]["kind"] for x in lines if x["topic"] == "observer.alerts"]
    assert alerts == []
    outcomes = {x["key"]: x["value"] for x in lines if x["topic"] == "observer.outcomes"}
    assert {k: o["outcome"] for k, o in outcomes.items()} == {
        "o-0": "completed",
        "o-1": "completed",
    }
    # and from bytes, as `observer run` reads them: the alias value is the exact decimal text
    f = tmp_path / "delivery.yaml"
    f.write_text(flow)
    reader = Ingest(load_registry([f]), Topics())
    raw = b'{"type": "TransportBooked", "order_id": "o-1", "tracking_no": %d}' % (BIG + 1)
    ((_, event),) = reader.decode(SourceRecord("shop.shipping", 0, 0, None, raw, [], T0)).events
    assert event.captures["value.tracking_no"] == str(BIG + 1)
