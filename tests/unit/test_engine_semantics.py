"""Section 2 of the contract, bullet by bullet, through replay (the engine on a virtual clock)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.replay_harness import BASE_FLOW, T0, alerts, ev, on_topic, outcomes, run


def test_happy_path_completes_with_no_alert(tmp_path: Path) -> None:
    lines = run(
        tmp_path, [ev("Placed", "o1", 0, total=12.5), ev("Paid", "o1", 3), ev("Shipped", "o1", 9)]
    )
    assert alerts(lines) == []
    (out,) = outcomes(lines)
    assert out == {
        "flow": "shop",
        "version": 1,
        "key": "o1",
        "outcome": "completed",
        "started_at": "2026-01-01T00:00:00Z",
        "ended_at": "2026-01-01T00:00:09Z",
        "duration_ms": 9000,
        "steps": {
            "placed": "2026-01-01T00:00:00Z",
            "paid": "2026-01-01T00:00:03Z",
            "shipped": "2026-01-01T00:00:09Z",
        },
        "deviations": [],
    }
    assert lines[-1]["key"] == "o1" and lines[-1]["timestamp"] == T0 + 9000


def test_missing_fires_once_at_its_deadline_with_handler_actions(tmp_path: Path) -> None:
    lines = run(tmp_path, [ev("Placed", "o1", 0, total=7), ev("Placed", "o2", 100, total=1)])
    o1 = [x for x in lines if x["key"] == "o1"]
    kinds = [(x["topic"], x["value"].get("kind") or x["value"].get("type")) for x in o1]
    # warning at 80% (8s), missing at 10s then its action, shipped missing at 30s (anchored at paid? no: paid unobserved -> shipped never armed)
    assert kinds == [
        ("observer.alerts", "warning"),
        ("observer.alerts", "missing"),
        ("cmds", "Cancel"),
    ]
    warning, missing, cancel = o1
    assert warning["timestamp"] == T0 + 8000
    assert (
        warning["value"]["deadline"] == "2026-01-01T00:00:10Z"
    )  # warnings carry the step's deadline
    assert warning["value"]["severity"] == "warning"
    assert missing["timestamp"] == T0 + 10000
    assert missing["value"] | {"summary": None} == {
        "flow": "shop",
        "version": 1,
        "key": "o1",
        "kind": "missing",
        "step": "paid",
        "severity": "critical",
        "deadline": "2026-01-01T00:00:10Z",
        "observed_at": None,
        "detected_at": "2026-01-01T00:00:10Z",
        "late_by_ms": None,
        "summary": None,
    }
    # a single {{ expr }} keeps its JSON type: total is a number
    assert cancel["value"] == {"type": "Cancel", "id": "o1", "total": 7}
    assert cancel["key"] == "o1"
    assert len({x["headers"]["observer-id"] for x in lines}) == len(lines)


def test_event_exactly_at_deadline_is_on_time_and_one_ms_later_is_late(tmp_path: Path) -> None:
    on_time = run(tmp_path, [ev("Placed", "o1", 0), ev("Paid", "o1", 10), ev("Shipped", "o1", 11)])
    assert [k for k, _, _ in alerts(on_time)] == ["warning"]
    late = run(tmp_path, [ev("Placed", "o1", 0), ev("Paid", "o1", 10.001), ev("Shipped", "o1", 11)])
    assert [k for k, _, _ in alerts(late)] == ["warning", "missing", "late"]
    late_alert = on_topic(late, "observer.alerts")[-1]["value"]
    assert late_alert["late_by_ms"] == 1
    assert late_alert["observed_at"] == "2026-01-01T00:00:10.001Z"
    # the `alert:` action of if_late sets severity and summary of the one alert record
    assert late_alert["severity"] == "info" and late_alert["summary"] == "late by 1ms"
    assert outcomes(late)[0]["deviations"] == ["warning", "missing", "late"]


def test_late_after_missing_still_counts_as_observed(tmp_path: Path) -> None:
    lines = run(tmp_path, [ev("Placed", "o1", 0), ev("Paid", "o1", 15), ev("Shipped", "o1", 20)])
    assert [k for k, _, _ in alerts(lines)] == ["warning", "missing", "late"]
    assert outcomes(lines)[0]["outcome"] == "completed"


def test_error_runs_handler_and_switches_to_the_compensation_path(tmp_path: Path) -> None:
    lines = run(tmp_path, [ev("Placed", "o1", 0), ev("Failed", "o1", 2), ev("Refunded", "o1", 4)])
    assert [
        (x["topic"], x["value"].get("kind") or x["value"].get("type") or x["value"].get("outcome"))
        for x in lines
    ] == [
        ("observer.alerts", "error"),
        ("cmds", "Refund"),
        ("observer.outcomes", "compensated"),
    ]
    err = lines[0]["value"]
    assert err["step"] is None and err["severity"] == "critical"
    assert err["observed_at"] == "2026-01-01T00:00:02Z" and err["deadline"] is None
    # the cancelled main-path steps raise nothing: no warning/missing for paid at 8s/10s
    assert outcomes(lines)[0]["deviations"] == ["error"]


def test_switch_anchors_new_path_at_the_trigger_time(tmp_path: Path) -> None:
    lines = run(tmp_path, [ev("Placed", "o1", 0), ev("Failed", "o1", 2)])
    missing = [x for x in on_topic(lines, "observer.alerts") if x["value"]["kind"] == "missing"]
    assert [(m["value"]["step"], m["value"]["deadline"]) for m in missing] == [
        ("refunded", "2026-01-01T00:00:07Z")
    ]


def test_cancelled_step_on_time_is_recorded_late_one_raises_late(tmp_path: Path) -> None:
    lines = run(
        tmp_path,
        [
            ev("Placed", "o1", 0),
            ev("Failed", "o1", 2),
            ev("Paid", "o1", 3),
            ev("Refunded", "o1", 4),
        ],
    )
    assert [k for k, _, _ in alerts(lines)] == ["error"]
    lines = run(
        tmp_path,
        [
            ev("Placed", "o1", 0),
            ev("Failed", "o1", 2),
            ev("Refunded", "o1", 4),
            ev("Paid", "o1", 12),
        ],
    )
    # the instance ended compensated at 4s; the cancelled step's late event still raises late
    assert [k for k, _, _ in alerts(lines)] == ["error", "late"]
    lines = run(
        tmp_path,
        [
            ev("Placed", "o1", 0),
            ev("Failed", "o1", 2),
            ev("Paid", "o1", 12),
            ev("Refunded", "o1", 6),
        ],
    )
    # read after the late Paid (12s): refunded's deadline (7s) fired before Paid was applied;
    # Refunded (event time 6s) is then observed after its `missing`: late by arrival, by the
    # clock at observation (12s) minus the deadline
    assert [(k, s) for k, s, _ in alerts(lines)] == [
        ("error", None),
        ("missing", "refunded"),
        ("late", "paid"),
        ("late", "refunded"),
    ]
    late = [x["value"] for x in on_topic(lines, "observer.alerts")][-1]
    assert late["late_by_ms"] == 5000 and late["observed_at"] == "2026-01-01T00:00:06Z"
    assert outcomes(lines)[0]["outcome"] == "compensated"


def test_missing_handler_then_switches_at_the_deadline(tmp_path: Path) -> None:
    flow = BASE_FLOW.replace("if_missing: [cancel]", "if_missing: {do: [cancel], then: comp}")
    lines = run(tmp_path, [ev("Placed", "o1", 0)], flow=flow)
    got = [
        (x["value"].get("kind"), x["value"].get("step"), x["timestamp"] - T0)
        for x in on_topic(lines, "observer.alerts")
    ]
    assert got == [
        ("warning", "paid", 8000),
        ("missing", "paid", 10000),
        ("missing", "refunded", 15000),
    ]


def test_alert_false_suppresses_the_alert_but_runs_actions(tmp_path: Path) -> None:
    flow = BASE_FLOW.replace("if_missing: [cancel]", "if_missing: {do: [cancel], alert: false}")
    lines = run(tmp_path, [ev("Placed", "o1", 0)], flow=flow)
    assert [k for k, _, _ in alerts(lines)] == ["warning"]
    assert [x["value"]["type"] for x in on_topic(lines, "cmds")] == ["Cancel"]


def test_sla_warning_and_breach(tmp_path: Path) -> None:
    flow = BASE_FLOW + "sla: {within: 60s, warn: 50s, if_breached: [refund]}\n"
    lines = run(tmp_path, [ev("Placed", "o1", 0), ev("Paid", "o1", 1)], flow=flow)
    sla = [
        (x["value"]["kind"], x["value"]["step"], x["value"]["deadline"], x["timestamp"] - T0)
        for x in on_topic(lines, "observer.alerts")
        if x["value"]["kind"].startswith("sla")
    ]
    assert sla == [
        ("sla_warning", None, "2026-01-01T00:01:00Z", 50000),
        ("sla_breach", None, "2026-01-01T00:01:00Z", 60000),
    ]
    assert on_topic(lines, "cmds")[-1]["value"]["type"] == "Refund"


def test_out_of_order_is_recorded_not_alerted_and_never_a_false_missing(tmp_path: Path) -> None:
    # shipped happens (event time) before paid, its anchor
    lines = run(tmp_path, [ev("Placed", "o1", 0), ev("Shipped", "o1", 2), ev("Paid", "o1", 3)])
    assert alerts(lines) == []
    assert outcomes(lines)[0]["deviations"] == ["out_of_order"]


def test_out_of_order_alerted_when_the_step_declares_a_handler(tmp_path: Path) -> None:
    flow = BASE_FLOW.replace(
        "    within: 20s\n", "    within: 20s\n    if_out_of_order: [refund]\n"
    )
    lines = run(
        tmp_path, [ev("Placed", "o1", 0), ev("Shipped", "o1", 2), ev("Paid", "o1", 3)], flow=flow
    )
    (a,) = on_topic(lines, "observer.alerts")
    assert a["value"]["kind"] == "out_of_order" and a["value"]["step"] == "shipped"
    assert (
        a["value"]["observed_at"] == "2026-01-01T00:00:02Z" and a["value"]["severity"] == "warning"
    )
    assert on_topic(lines, "cmds")[0]["value"]["type"] == "Refund"


def test_early_event_across_topics_is_buffered_and_applied_without_deviation(
    tmp_path: Path,
) -> None:
    # the payment is read before its order (separate topics), in correct event-time order
    events = [ev("Paid", "o1", 3), ev("Placed", "o1", 0), ev("Shipped", "o1", 5)]
    events[1]["timestamp"] = T0 + 4000  # read later, but event time 0
    events[1]["value"]["at"] = T0
    flow = BASE_FLOW.replace(
        "orders: {topic: orders, type: value.type, key: value.id, id: header.eid}",
        "orders: {topic: orders, type: value.type, key: value.id, id: header.eid, time: value.at}",
    )
    lines = run(tmp_path, events, flow=flow)
    assert alerts(lines) == []
    assert outcomes(lines)[0]["steps"]["paid"] == "2026-01-01T00:00:03Z"


def test_buffered_event_orphaned_after_buffer(tmp_path: Path) -> None:
    lines = run(tmp_path, [ev("Paid", "o9", 1)])
    (a,) = on_topic(lines, "observer.alerts")
    assert a["value"]["kind"] == "orphaned" and a["value"]["step"] == "paid"
    assert a["value"]["severity"] == "critical"
    assert a["value"]["observed_at"] == "2026-01-01T00:00:01Z"
    assert a["timestamp"] == T0 + 31000  # buffer 30s from when it was read


def test_duplicates_change_nothing(tmp_path: Path) -> None:
    once = run(
        tmp_path, [ev("Placed", "o1", 0), ev("Failed", "o1", 1, eid="f1"), ev("Refunded", "o1", 2)]
    )
    twice = run(
        tmp_path,
        [
            ev("Placed", "o1", 0),
            ev("Failed", "o1", 1, eid="f1"),
            ev("Failed", "o1", 1, eid="f1"),
            ev("Placed", "o1", 0),
            ev("Refunded", "o1", 2),
        ],
    )
    assert [(x["topic"], x["headers"]["observer-id"]) for x in once] == [
        (x["topic"], x["headers"]["observer-id"]) for x in twice
    ]


def test_start_event_for_open_instance_is_a_duplicate(tmp_path: Path) -> None:
    lines = run(
        tmp_path, [ev("Placed", "o1", 0), ev("Placed", "o1", 5, eid="other"), ev("Paid", "o1", 6)]
    )
    # the second Placed starts nothing: paid (6s) is on time against the first start (0s)
    # and shipped, anchored at paid, is missing at 26s — once, for the one instance
    assert alerts(lines) == [("missing", "shipped", "o1")]
    assert on_topic(lines, "observer.alerts")[0]["value"]["deadline"] == "2026-01-01T00:00:26Z"


def test_after_the_end_late_step_still_alerts_and_nothing_else(tmp_path: Path) -> None:
    events = [
        ev("Placed", "o1", 0),
        ev("Failed", "o1", 1),
        ev("Refunded", "o1", 2),
        ev("Paid", "o1", 30),
        ev("Placed", "o1", 31, eid="again"),
        ev("Failed", "o1", 32, eid="f2"),
    ]
    lines = run(tmp_path, events)
    assert [k for k, _, _ in alerts(lines)] == ["error", "late"]
    assert len(outcomes(lines)) == 1
    late = on_topic(lines, "observer.alerts")[-1]["value"]
    assert late["severity"] == "info"  # its if_late alert action
    assert late["late_by_ms"] == 20000


def test_retain_frees_the_key_and_expire_ends_open_instances(tmp_path: Path) -> None:
    until = T0 + 2 * 86_400_000
    events = [
        ev("Placed", "o1", 0),
        ev("Paid", "o1", 1),
        ev("Shipped", "o1", 2),
        ev("Placed", "o2", 3),
        ev("Paid", "o2", 4),
    ]
    lines = run(tmp_path, [*events, ev("Placed", "o1", 3700, eid="new")], until=until)
    outs = [(o["key"], o["outcome"], o["ended_at"]) for o in outcomes(lines)]
    assert ("o2", "expired", "2026-01-02T00:00:03Z") in outs
    # o1 retained 1h after ending at 2s: a start at 3700s opens a new instance
    assert next(o for o in outs if o[0] == "o1")[1] == "completed"
    assert any(a == ("missing", "paid", "o1") for a in alerts(lines))


def test_without_until_expire_and_retain_do_not_fire(tmp_path: Path) -> None:
    lines = run(tmp_path, [ev("Placed", "o1", 0), ev("Paid", "o1", 1)])
    assert outcomes(lines) == []
    assert [k for k, _, _ in alerts(lines)] == ["missing"]  # shipped at 21s


def test_versions_open_instances_keep_theirs_new_ones_take_the_newest(tmp_path: Path) -> None:
    v2 = BASE_FLOW.replace("version: 1", "version: 2").replace(
        "within: 10s\n    warn: 80%", "within: 2s\n    warn: 50%"
    )
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "flow.yaml").write_text(v2)
    lines = run(
        tmp_path,
        [
            ev("Placed", "o1", 0),
            ev("Placed", "o2", 5),
            ev("Paid", "o1", 6),
            ev("Paid", "o2", 9),
            ev("Shipped", "o1", 7),
            ev("Shipped", "o2", 10),
        ],
        deploys=[(T0 + 5000, str(tmp_path / "v2" / "flow.yaml"))],
    )
    by_key = {o["key"]: o["version"] for o in outcomes(lines)}
    assert by_key == {"o1": 1, "o2": 2}
    assert ("late", "paid", "o2") in alerts(lines)
    assert ("late", "paid", "o1") not in alerts(lines)


def test_bad_records_go_to_the_dead_letter_topic_and_the_rest_continue(tmp_path: Path) -> None:
    bad_time = ev("Placed", "o2", 1)
    bad_time["value"]["at"] = "yesterday"
    flow = BASE_FLOW.replace(
        "orders: {topic: orders, type: value.type, key: value.id, id: header.eid}",
        "orders: {topic: orders, type: value.type, key: value.id, id: header.eid, time: value.at}",
    )
    no_type = {"topic": "orders", "key": "x", "value": {"id": "o3"}, "timestamp": T0 + 2000}
    not_json = {
        "topic": "orders",
        "key": "x",
        "value": "{not json",
        "headers": {"h": "1"},
        "timestamp": T0 + 3000,
    }
    ok = ev("Placed", "o4", 4)
    ok["value"]["at"] = T0 + 4000
    lines = run(
        tmp_path,
        [bad_time, no_type, not_json, ok, ev("Paid", "o4", 5), ev("Shipped", "o4", 6)],
        flow=flow,
    )
    dlq = on_topic(lines, "observer.dlq")
    assert [
        (d["headers"]["observer-source-offset"], d["headers"]["observer-source-topic"]) for d in dlq
    ] == [("0", "orders"), ("1", "orders"), ("2", "orders")]
    assert (
        "time" in dlq[0]["headers"]["observer-error"]
        and "type" in dlq[1]["headers"]["observer-error"]
    )
    assert dlq[2]["value"] == "{not json" and dlq[2]["headers"]["h"] == "1" and dlq[2]["key"] == "x"
    assert dlq[2]["headers"]["observer-source-partition"] == "0"
    assert outcomes(lines)[0]["key"] == "o4"


def test_events_matching_nothing_are_ignored(tmp_path: Path) -> None:
    lines = run(
        tmp_path,
        [
            {"topic": "orders", "key": "x", "value": {"type": "Unrelated"}, "timestamp": T0},
            {"topic": "elsewhere", "value": "x", "timestamp": T0},
        ],
    )
    assert lines == []


def test_webhook_lines_carry_null_topic_url_and_id(tmp_path: Path) -> None:
    flow = (
        BASE_FLOW.replace("if_missing: [cancel]", "if_missing: [cancel, page]")
        + '  page:\n    webhook: {url: "http://127.0.0.1:9099/hook", severity: info}\n'
    )
    lines = run(tmp_path, [ev("Placed", "o1", 0)], flow=flow)
    (hook,) = [x for x in lines if x["topic"] is None]
    assert hook["webhook"] == "http://127.0.0.1:9099/hook"
    assert hook["value"]["kind"] == "missing" and hook["value"]["severity"] == "info"
    assert hook["headers"]["observer-id"]
    assert list(hook) == ["topic", "webhook", "key", "value", "headers", "timestamp"]


def test_optional_step_is_skipped_by_the_default_anchor_and_never_missing(tmp_path: Path) -> None:
    flow = BASE_FLOW.replace(
        "  - step: shipped\n",
        "  - step: gift\n    on: ship.Gift\n    optional: true\n    within: 1s\n  - step: shipped\n",
    )
    lines = run(
        tmp_path, [ev("Placed", "o1", 0), ev("Paid", "o1", 1), ev("Shipped", "o1", 2)], flow=flow
    )
    assert alerts(lines) == [] and outcomes(lines)[0]["outcome"] == "completed"
    late = run(
        tmp_path,
        [
            ev("Placed", "o1", 0),
            ev("Paid", "o1", 1),
            ev("Gift", "o1", 5, topic="ship"),
            ev("Shipped", "o1", 6),
        ],
        flow=flow,
    )
    assert alerts(late) == [("late", "gift", "o1")]


def test_same_input_same_output_byte_for_byte(tmp_path: Path) -> None:
    events = [ev("Placed", f"o{i}", i) for i in range(5)] + [
        ev("Failed", "o2", 6),
        ev("Paid", "o3", 30),
    ]
    assert run(tmp_path, events) == run(tmp_path, events)


def test_a_key_reused_after_retain_gets_new_record_ids(tmp_path: Path) -> None:
    first = [ev("Placed", "o1", 0), ev("Paid", "o1", 1), ev("Shipped", "o1", 2)]
    second = [
        ev("Placed", "o1", 4000, eid="p2"),
        ev("Paid", "o1", 4001, eid="x2"),
        ev("Shipped", "o1", 4002, eid="s2"),
    ]
    lines = run(tmp_path, first + second)
    assert [o["started_at"] for o in outcomes(lines)] == [
        "2026-01-01T00:00:00Z",
        "2026-01-01T01:06:40Z",
    ]
    assert len({x["headers"]["observer-id"] for x in lines}) == len(lines) == 2


def test_alert_action_without_severity_keeps_the_kinds_severity(tmp_path: Path) -> None:
    flow = (
        BASE_FLOW.replace("if_missing: [cancel]", "if_missing: [note, cancel]")
        + '  note:\n    alert: {summary: "no payment for {{ key }}"}\n'
    )
    lines = run(tmp_path, [ev("Placed", "o1", 0)], flow=flow)
    missing = next(
        x["value"] for x in on_topic(lines, "observer.alerts") if x["value"]["kind"] == "missing"
    )
    assert missing["severity"] == "critical" and missing["summary"] == "no payment for o1"


def test_ties_between_instances_fire_in_the_order_instances_started(tmp_path: Path) -> None:
    # o2's early payment is read first (its slot exists first), but o1's instance starts first
    events = [
        ev("Paid", "o2", 0),
        ev("Placed", "o1", 0),
        ev("Placed", "o2", 0),
        ev("Paid", "o1", 0),
    ]
    lines = run(tmp_path, events)
    assert alerts(lines) == [("missing", "shipped", "o1"), ("missing", "shipped", "o2")]
    assert [x["timestamp"] - T0 for x in on_topic(lines, "observer.alerts")] == [20000, 20000]


def test_overdue_timer_is_detected_when_the_observer_decides(tmp_path: Path) -> None:
    flow = BASE_FLOW.replace("id: header.eid}", "id: header.eid, time: value.at}")
    placed = ev("Placed", "o1", 0)
    placed["value"]["at"] = T0
    placed["timestamp"] = T0 + 60_000  # read a minute after it happened
    later = ev("Placed", "o2", 61)
    later["value"]["at"] = T0 + 61_000
    lines = run(tmp_path, [placed, later], flow=flow)
    first = on_topic(lines, "observer.alerts")[0]
    assert (
        first["value"]["kind"] == "warning" and first["value"]["deadline"] == "2026-01-01T00:00:10Z"
    )
    assert first["value"]["detected_at"] == "2026-01-01T00:01:00Z"
    assert first["timestamp"] == T0 + 60_000
