"""Actions that cannot be carried out, and records kept within the broker's limit (issue 12):
through the engine and `observer replay`, every failure kind leaves the alert (with
`action_errors`), the other actions and one dead letter per failed action."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from observer.limits import MAX_CAPTURE_BYTES, MAX_EVENT_ID_BYTES, MAX_KEY_BYTES
from observer.record_size import TRUNCATED_HEADER, RecordLimits, header_bytes, record_bytes
from observer.topics import Topics
from tests.unit.replay_harness import BASE_FLOW, T0, alerts, ev, on_topic, run

ROOT = Path(__file__).resolve().parents[2]

FLOW = """
flow: shop
version: 1
sources:
  orders: {topic: orders, type: value.type, key: value.id, id: header.eid}
  pay: {topic: pay, type: value.type, key: value.id, id: header.eid}
steps:
  - step: placed
    on: orders.Placed
    capture: [value.total, value.items, value.note]
  - step: paid
    on: pay.Paid
    within: 10s
    if_missing: [explain, cancel, page, notify]
errors:
  - on: pay.Failed
    do: [cancel, refund]
actions:
  explain:
    alert: {severity: critical, summary: "order {{ key }}: {{ steps.placed.value.items | length }} items"}
  cancel:
    publish:
      topic: cmds
      key: "{{ key }}"
      value: {type: Cancel, id: "{{ key }}", amount: "{{ steps.placed.value.total * 100 }}"}
  refund:
    publish: {topic: cmds, key: "{{ key }}", value: {type: Refund, id: "{{ key }}"}}
  notify:
    publish: {topic: ops, key: "{{ key }}", value: {type: Notify, note: "{{ steps.placed.value.note }}"}}
  page:
    webhook: {url: "http://127.0.0.1:9/hook"}
"""


def _dlq(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return on_topic(lines, "observer.dlq")


def _alert(lines: list[dict[str, Any]]) -> dict[str, Any]:
    (alert,) = on_topic(lines, "observer.alerts")
    return alert


def _errors_match_dead_letters(lines: list[dict[str, Any]], key: str) -> None:
    """Each action error of the alert is dead-lettered once, as the contract's JSON."""
    alert = _alert(lines)
    dead = _dlq(lines)
    assert [d["value"]["action"] for d in dead] == [
        e["action"] for e in alert["value"]["action_errors"]
    ]
    for d, e in zip(dead, alert["value"]["action_errors"], strict=True):
        assert d["key"] == key
        assert d["value"] == {"flow": "shop", "version": 1, "key": key, **e}
        assert d["headers"]["observer-error"] == e["error"]
        assert d["headers"]["observer-id"] not in {
            x["headers"]["observer-id"] for x in lines if x is not d
        }


def test_a_template_that_fails_at_a_deadline_keeps_the_alert_and_the_other_actions(
    tmp_path: Path,
) -> None:
    # no `total` (None * 100), no `items` (length of null): `explain` and `cancel` fail
    lines = run(tmp_path, [ev("Placed", "o1", 0, note="n")], FLOW)
    alert = _alert(lines)["value"]
    assert alert["kind"] == "missing" and alert["severity"] == "critical"
    assert alert["summary"] == "shop o1: step 'paid' missing (deadline 2026-01-01T00:00:10Z)"
    errors = {e["action"]: e["error"] for e in alert["action_errors"]}
    assert list(errors) == ["explain", "cancel"]
    assert errors["cancel"].startswith("template '{{ steps.placed.value.total * 100 }}': ")
    assert "length" in errors["explain"] or "NoneType" in errors["explain"]
    _errors_match_dead_letters(lines, "o1")
    # the other actions still go out: the webhook (a copy of the alert) and notify
    (hook,) = [x for x in lines if x.get("webhook")]
    assert hook["value"]["action_errors"] == alert["action_errors"]
    assert [x["value"] for x in on_topic(lines, "ops")] == [{"type": "Notify", "note": "n"}]
    assert on_topic(lines, "cmds") == []


def test_a_template_that_fails_on_an_error_event_does_not_lose_the_refund(tmp_path: Path) -> None:
    lines = run(tmp_path, [ev("Placed", "o2", 0), ev("Failed", "o2", 1)], FLOW, until=T0 + 2000)
    alert = _alert(lines)["value"]
    assert alert["kind"] == "error" and [e["action"] for e in alert["action_errors"]] == ["cancel"]
    assert [x["value"]["type"] for x in on_topic(lines, "cmds")] == ["Refund"]
    _errors_match_dead_letters(lines, "o2")


def test_the_same_input_gives_the_same_records_ids_included(tmp_path: Path) -> None:
    events = [ev("Placed", "o1", 0), ev("Failed", "o1", 1)]
    first = run(tmp_path, events, FLOW)
    assert run(tmp_path, events, FLOW) == first
    assert len({x["headers"]["observer-id"] for x in first}) == len(first)


def test_a_value_that_does_not_fit_its_avro_schema_is_an_action_error(tmp_path: Path) -> None:
    schema = {
        "type": "record",
        "name": "Ship",
        "fields": [{"name": "id", "type": "string"}, {"name": "qty", "type": "int"}],
    }
    (tmp_path / "ship.avsc").write_text(json.dumps(schema))
    flow = FLOW.replace(
        '    publish: {topic: cmds, key: "{{ key }}", value: {type: Refund, id: "{{ key }}"}}',
        '    publish: {topic: cmds, schema: ship.avsc, key: "{{ key }}",'
        ' value: {id: "{{ key }}", qty: "{{ steps.placed.value.total }}"}}',
    )
    lines = run(
        tmp_path,
        [
            *(ev("Placed", "ok", 0, total=3), ev("Failed", "ok", 1)),
            *(ev("Placed", "lots", 0, total="lots"), ev("Failed", "lots", 1)),
            *(ev("Placed", "wide", 0, total=2**40), ev("Failed", "wide", 1)),
        ],
        flow,
        until=T0 + 2000,
    )
    by_key = {x["key"]: x for x in on_topic(lines, "observer.alerts")}
    assert "action_errors" not in by_key["ok"]["value"]
    for key in ("lots", "wide"):
        errors = {e["action"]: e["error"] for e in by_key[key]["value"]["action_errors"]}
        assert errors["refund"].startswith("its value does not fit its Avro schema: "), errors
    refunds = [x for x in on_topic(lines, "cmds") if isinstance(x["value"], str)]  # Avro
    assert [x["key"] for x in refunds] == ["ok"]
    assert sorted(d["key"] for d in _dlq(lines) if d["value"]["action"] == "refund") == [
        "lots",
        "wide",
    ]


def test_an_action_over_its_topics_limit_is_an_action_error(tmp_path: Path) -> None:
    topics = Topics(limits=RecordLimits(16_384, (("ops", 8_000),)))
    note = "x" * 9_000  # fits `cmds` (16 KiB), not `ops` (8,000 bytes)
    lines = run(
        tmp_path, [ev("Placed", "o3", 0, total=1, items=[], note=note)], FLOW, topics=topics
    )
    alert = _alert(lines)["value"]
    (error,) = alert["action_errors"]
    assert error["action"] == "notify"
    assert "larger than topic 'ops' accepts (8000 bytes)" in error["error"]
    assert [x["value"]["type"] for x in on_topic(lines, "cmds")] == ["Cancel"]
    assert on_topic(lines, "ops") == []
    _errors_match_dead_letters(lines, "o3")


def test_an_invalid_topic_name_is_an_action_error(tmp_path: Path) -> None:
    flow = FLOW.replace("topic: ops,", 'topic: "ops {{ steps.placed.value.note }}",')
    lines = run(tmp_path, [ev("Placed", "o4", 0, total=1, items=[], note="a b")], flow)
    (error,) = _alert(lines)["value"]["action_errors"]
    assert error == {"action": "notify", "error": "topic 'ops a b' is not a Kafka topic name"}


def test_a_huge_summary_is_cut_so_the_alert_fits(tmp_path: Path) -> None:
    flow = FLOW.replace(
        '"order {{ key }}: {{ steps.placed.value.items | length }} items"',
        '"{{ steps.placed.value.note * 20 }}"',
    )
    topics = Topics(limits=RecordLimits(50_000))
    note = "é" * 3_000  # 60,000 characters once repeated, 120,000 bytes of UTF-8
    lines = run(
        tmp_path, [ev("Placed", "o5", 0, total=1, items=[], note=note)], flow, topics=topics
    )
    alert = _alert(lines)
    summary = alert["value"]["summary"]
    assert summary.endswith("… (truncated)") and summary.startswith("éé")
    body = orjson.dumps(alert["value"])
    size = record_bytes(len(b"o5"), len(body), header_bytes(alert["headers"].items()))
    assert 40_000 < size <= 50_000


def test_a_captured_value_over_its_budget_fails_the_actions_that_use_it(tmp_path: Path) -> None:
    notes: list[str] = []
    big = "y" * (MAX_CAPTURE_BYTES + 10)
    lines = run(
        tmp_path, [ev("Placed", "o6", 0, total=5, items=[1], note=big)], FLOW, warn=notes.append
    )
    (error,) = _alert(lines)["value"]["action_errors"]
    assert error["action"] == "notify"
    assert "steps.placed.value.note was not kept" in error["error"]
    assert [x["value"]["amount"] for x in on_topic(lines, "cmds")] == [500]
    (note,) = notes
    assert "captured value.note" in note and "not kept" in note


def test_keys_and_event_ids_over_their_limits_are_bad_input(tmp_path: Path) -> None:
    long_key = "k" * (MAX_KEY_BYTES + 1)
    events = [
        ev("Placed", long_key, 0),
        ev("Placed", "o7", 0, eid="e" * (MAX_EVENT_ID_BYTES + 1)),
        ev("Placed", "é" * (MAX_KEY_BYTES // 2), 0, eid="ok", total=1, items=[], note=""),
    ]
    lines = run(tmp_path, events, FLOW)
    reasons = [d["headers"]["observer-error"] for d in _dlq(lines)]
    assert reasons == [
        f"correlation key at value.id longer than {MAX_KEY_BYTES} bytes",
        f"event id longer than {MAX_EVENT_ID_BYTES} bytes",
    ]
    assert [a["value"]["kind"] for a in on_topic(lines, "observer.alerts")] == ["missing"]


def test_a_dead_letter_over_the_limit_keeps_its_headers_and_a_cut_value(tmp_path: Path) -> None:
    record = {
        "topic": "orders",
        "key": "o8",
        "value": "{" + "z" * 1_048_500,  # not JSON: with its headers, over the 1 MiB limit
        "headers": {"eid": "e8", "trace": "t" * 100},
        "timestamp": T0,
    }
    (line,) = run(tmp_path, [record], FLOW)
    headers = line["headers"]
    assert headers["eid"] == "e8" and headers["trace"] == "t" * 100
    assert headers["observer-source-offset"] == "0" and headers["observer-error"]
    assert headers[TRUNCATED_HEADER].startswith("value 1048501 bytes to ")
    value = line["value"].encode()
    assert value == record["value"].encode()[: len(value)]
    size = record_bytes(2, len(value), header_bytes(headers.items()))
    assert 1_040_000 < size <= 1_048_588


def test_early_events_over_their_byte_budget_are_dropped_and_told(tmp_path: Path) -> None:
    notes: list[str] = []
    flow = FLOW.replace("    within: 10s\n", "    within: 10s\n    capture: [value.pad]\n", 1)
    pays = [ev("Paid", "o9", i / 1000, eid=f"p{i}", pad="p" * 60_000) for i in range(100)]
    lines = run(tmp_path, [*pays, ev("Placed", "o9", 1)], flow, warn=notes.append)
    dropped = [n for n in notes if "dropped" in n]
    # 4 MiB hold 69 of them (60,000 bytes each, and their ids)
    assert len(dropped) == 31 and all("over the budget of the key's early" in n for n in dropped)
    assert dropped[0].startswith("shop o9: early event Paid p69 dropped: ")
    assert on_topic(lines, "observer.alerts") == []  # the first kept one is the step


def test_replay_exits_0_and_writes_the_alert_and_dead_letters(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(FLOW)
    events = [ev("Placed", "c1", 0, note="x" * 20_000), ev("Failed", "c1", 1)]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    env = {"OBSERVER_MAX_RECORD_BYTES": "16384", "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [
            *(sys.executable, "-m", "observer.cli", "replay", str(tmp_path / "flow.yaml")),
            *("--events", str(tmp_path / "events.jsonl"), "--until", str(T0 + 20_000)),
        ],
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr.decode()
    lines = [orjson.loads(x) for x in res.stdout.splitlines()]
    alerts = on_topic(lines, "observer.alerts")
    assert [x["value"]["kind"] for x in alerts] == ["error", "missing"]
    failed = [[e["action"] for e in a["value"]["action_errors"]] for a in alerts]
    # cancel: no total; explain: no items; notify: 20 kB of note over OBSERVER_MAX_RECORD_BYTES
    assert failed == [["cancel"], ["explain", "cancel", "notify"]]
    assert [d["value"]["action"] for d in _dlq(lines)] == ["cancel", "explain", "cancel", "notify"]
    assert [x["value"]["type"] for x in on_topic(lines, "cmds")] == ["Refund"]
    assert b"Traceback" not in res.stderr


@pytest.mark.parametrize("value", ["lots", "1e400", "-1"])
def test_a_bad_limit_in_the_environment_is_refused(tmp_path: Path, value: str) -> None:
    (tmp_path / "flow.yaml").write_text(FLOW)
    (tmp_path / "events.jsonl").write_text("")
    res = subprocess.run(
        [
            *(sys.executable, "-m", "observer.cli", "replay", str(tmp_path / "flow.yaml")),
            *("--events", str(tmp_path / "events.jsonl")),
        ],
        capture_output=True,
        cwd=ROOT,
        env={"OBSERVER_MAX_RECORD_BYTES": value, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert res.returncode == 2 and b"OBSERVER_MAX_RECORD_BYTES" in res.stderr


def test_an_orphan_storm_is_one_incident_with_its_count_when_the_flow_asks_for_it(
    tmp_path: Path,
) -> None:
    """5,000 keys that never start (issue 12.5: 20,000 made as many critical alerts): without guardrails each orphaned event is
    its alert (contract §2); with `guardrails: incident` the storm is one incident record
    and one `incident_resolved` with the count, after the `threshold - 1` before it."""
    events = [ev("Paid", f"x-{i}", i * 0.003) for i in range(5_000)]
    plain = run(tmp_path, events)
    assert alerts(plain).count(("orphaned", "paid", "x-0")) == 1
    assert len(alerts(plain)) == 5_000
    guarded = BASE_FLOW.replace(
        "buffer: 30s", "buffer: 30s\nguardrails: {incident: {threshold: 20, within: 1m}}"
    )
    lines = run(tmp_path, events, guarded)
    kinds = [k for k, _step, _key in alerts(lines)]
    assert kinds.count("orphaned") == 19 and len(kinds) == 21
    opened, resolved = (x["value"] for x in lines if x["value"]["kind"].startswith("incident"))
    assert (opened["kind"], opened["deviation"], opened["step"], opened["count"]) == (
        "incident",
        "orphaned",
        "paid",
        20,
    )
    assert (resolved["kind"], resolved["count"]) == ("incident_resolved", 5_000)
